"""Class-agnostic saliency scores against the ground truth's foreground (docs/methods.md §4).

Foreground is mask > 0, 255 is ignored. For each threshold t the prediction is map > t; true and
false positives and false negatives are summed over all images (dataset-level, as the mIoU of the
seeds), giving at each t the foreground IoU tp / (tp + fp + fn), precision and recall, and the
F-measure (1 + β²) P R / (β² P + R) with β² = 0.3 (the salient-object convention, precision
weighted). Reported: the best IoU and its threshold, the highest F-measure over the thresholds
(maxF), and the MAE (mean |map − foreground| over the valid pixels of each image, averaged over
the images). A seeds file scores as its highest class map per pixel (the seeds' own foreground).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsss_steps.data.images import IGNORE_LABEL

F_BETA_SQUARED = 0.3


@dataclass
class SaliencyCounts:
    """Counts over a set of images: per threshold (T,) tp, fp, fn; and the MAE terms."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    abs_error_sum: float = 0.0  # Σ over images of each image's MAE
    images: int = 0

    @classmethod
    def empty(cls, num_thresholds: int) -> SaliencyCounts:
        zeros = np.zeros(num_thresholds, dtype=np.int64)
        return cls(zeros.copy(), zeros.copy(), zeros.copy())

    def add(self, saliency: np.ndarray, mask: np.ndarray, thresholds: Sequence[float]) -> None:
        """Adds one image: its map (H, W) in [0, 1] and ground-truth mask (H, W)."""
        saliency = np.asarray(saliency, dtype=np.float32)
        mask = np.asarray(mask)
        if saliency.shape != mask.shape:
            raise ValueError(f"saliency map is {saliency.shape}, the mask is {mask.shape}")
        valid = mask != IGNORE_LABEL
        scores = saliency[valid]
        truth = mask[valid] > 0
        predicted = scores[None, :] > np.asarray(thresholds, dtype=np.float32)[:, None]  # (T, N)
        tp = (predicted & truth).sum(axis=1)
        self.tp += tp
        self.fp += predicted.sum(axis=1) - tp
        self.fn += int(truth.sum()) - tp
        if scores.size:
            self.abs_error_sum += float(np.abs(scores - truth).mean())
            self.images += 1

    def scores(self) -> dict[str, np.ndarray]:
        """Per threshold: iou, precision, recall, f_measure (NaN where undefined)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = self.tp / (self.tp + self.fp + self.fn)
            precision = self.tp / (self.tp + self.fp)
            recall = self.tp / (self.tp + self.fn)
            f_measure = (1 + F_BETA_SQUARED) * precision * recall / (F_BETA_SQUARED * precision + recall)
        f_measure = np.where((self.tp == 0) & (self.fp + self.fn > 0), 0.0, f_measure)
        return {"iou": iou.astype(np.float64), "precision": precision.astype(np.float64),
                "recall": recall.astype(np.float64), "f_measure": f_measure.astype(np.float64)}

    def mae(self) -> float:
        return self.abs_error_sum / self.images if self.images else float("nan")


def foreground_map(maps: np.ndarray) -> np.ndarray:
    """A saliency map (H, W) as it is, or seeds (K, H, W) as their highest map per pixel (0 for
    an image without classes)."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 2:
        return maps
    if maps.ndim != 3:
        raise ValueError(f"a saliency map is (H, W) and seeds are (K, H, W), not {maps.shape}")
    return maps.max(axis=0) if maps.shape[0] else np.zeros(maps.shape[1:], dtype=np.float32)
