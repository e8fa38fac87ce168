"""Renders one image's maps from any stage's HDF5 file as an overlay PNG.

One panel for the image, one for its ground-truth mask (when the manifest has one), then one per
map channel (a heat map over the image, titled with the class name) or, for label maps, the
colourised labels.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from wsss_steps.data.images import voc_palette

PANEL_TITLE_HEIGHT = 18


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a [0, 1] map (H, W) as a jet colour map over an RGB image."""
    heat8 = (np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(heat8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (image.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    return voc_palette()[labels.astype(np.uint8)]


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((PANEL_TITLE_HEIGHT, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title[:40], (2, PANEL_TITLE_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def render_maps(image: np.ndarray, maps: dict[str, np.ndarray], class_names: Sequence[str],
                mask: np.ndarray | None = None, map_name: str | None = None) -> np.ndarray:
    """A row of titled panels: image, ground truth, and the chosen map's channels."""
    height, width = image.shape[:2]
    panels = [titled(image, "image")]
    if mask is not None:
        panels.append(titled(colorize_labels(mask), "ground truth"))
    names = [map_name] if map_name else [n for n in maps if n != "keys"]
    keys = maps.get("keys", np.arange(0))
    for name in names:
        array = np.asarray(maps[name])
        if array.ndim == 2 and array.dtype.kind in "iu":
            panels.append(titled(colorize_labels(cv2.resize(array.astype(np.uint8), (width, height),
                                                             interpolation=cv2.INTER_NEAREST)), name))
            continue
        channels = array[None] if array.ndim == 2 else array
        for index, channel in enumerate(channels):
            channel = cv2.resize(channel.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
            label = class_names[int(keys[index])] if array.ndim == 3 and index < len(keys) else name
            panels.append(titled(heat_overlay(image, channel), f"{name}: {label}"))
    return np.concatenate(panels, axis=1)
