"""Label maps from per-class score maps: the argmax over [background score, maps] of docs/methods.md §7.

Seeds, affinity labels, random-walk pseudo labels and their evaluation all turn maps (K, H, W) of an
image's K label classes (``keys``) into labels the same way: a pixel takes its best class where that
class's score beats the background score, else background (a tie goes to background).
"""

from __future__ import annotations

import numpy as np


def foreground_argmax(maps: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel the best class (1..C, mask numbering) and its score; with no map, 0 and -inf.

    The label at background score t is ``label`` where ``score > t``, else 0; a threshold sweep
    reuses one call for every t."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if maps.shape[0] == 0:
        shape = maps.shape[1:]
        return np.zeros(shape, dtype=np.int64), np.full(shape, -np.inf, dtype=np.float32)
    best = np.argmax(maps, axis=0)
    score = np.take_along_axis(maps, best[None], axis=0)[0]
    return keys[best] + 1, score


def labels_at_threshold(maps: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) uint8 in mask numbering: argmax of [threshold, maps] (ties → background)."""
    label, score = foreground_argmax(maps, keys)
    return np.where(score > np.asarray(threshold, dtype=maps.dtype), label, 0).astype(np.uint8)


def padded_argmax(maps: np.ndarray, background: float) -> np.ndarray:
    """Compact labels (H, W): 0 where no map beats ``background`` (ties too), else 1 + map index."""
    label, score = foreground_argmax(maps, np.arange(maps.shape[0]))
    return np.where(score > np.asarray(background, dtype=maps.dtype), label, 0)
