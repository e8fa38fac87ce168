"""Weakly supervised object localisation (docs/methods.md §8): the metrics
GT-known Loc, Top-1 Loc, MaxBoxAcc, MaxBoxAccV2 and PxAP, accumulated image by image.

The protocol follows wsolevaluation (Choe et al., CVPR 2020); the boxes are
`wsss_steps.methods.boxes`. An image counts as localised at a threshold when some predicted box
overlaps some ground-truth box of its class with IoU ≥ δ.

PxAP: the area under the pixel precision–recall curve of the normalised map against the
ground-truth foreground (mask values 1..C; 255 ignored), from per-threshold histograms as
wsolevaluation's MaskEvaluator (bounded memory on any number of images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wsss_steps.data.images import IGNORE_LABEL
from wsss_steps.methods.boxes import box_iou, boxes_from_map, normalize_map

IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)  # MaxBoxAccV2's δ; MaxBoxAcc and *-Loc use 0.5
NUM_THRESHOLDS = 100


def thresholds(count: int = NUM_THRESHOLDS) -> np.ndarray:
    """The map thresholds 0, 1/count, ..., (count − 1)/count (wsolevaluation's cam_curve_interval 0.01)."""
    return np.arange(count, dtype=np.float64) / count


def best_iou_per_threshold(boxes: list[np.ndarray], gt_boxes: np.ndarray) -> np.ndarray:
    """For each threshold's predicted boxes, the highest IoU with any ground-truth box."""
    counts = [len(b) for b in boxes]
    ious = box_iou(np.concatenate(boxes), gt_boxes).max(axis=1)
    return np.maximum.reduceat(ious, np.cumsum([0, *counts[:-1]]))


@dataclass
class WsolCounts:
    """Per-threshold localisation hits over images (see the module docstring)."""

    num_thresholds: int = NUM_THRESHOLDS
    iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS
    images: int = 0
    top1_correct: int = 0
    hits: np.ndarray = field(init=False)  # (T,) largest contour, IoU ≥ 0.5, class-agnostic (GT-known)
    hits_top1: np.ndarray = field(init=False)  # (T,) the same and the top-1 class correct
    hits_all_contours: np.ndarray = field(init=False)  # (len(iou_thresholds), T), all contours
    mask_images: int = 0
    fg_histogram: np.ndarray = field(init=False)  # PxAP: foreground / background pixels per score bin
    bg_histogram: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.levels = thresholds(self.num_thresholds)
        self.hits = np.zeros(self.num_thresholds, dtype=np.int64)
        self.hits_top1 = np.zeros(self.num_thresholds, dtype=np.int64)
        self.hits_all_contours = np.zeros((len(self.iou_thresholds), self.num_thresholds), dtype=np.int64)
        # Bin edges as wsolevaluation: the thresholds, then 1, 2, 3 (a score of exactly 1 in the last bin).
        self.edges = np.append(self.levels, [1.0, 2.0, 3.0])
        self.fg_histogram = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.bg_histogram = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def add(self, score_map: np.ndarray, gt_boxes: np.ndarray, top1_correct: bool = True,
            mask: np.ndarray | None = None) -> np.ndarray:
        """Adds one image: its map (any range; normalised here), its ground-truth boxes (n ≥ 1, 4) of
        the class the map is for, whether the classifier's top-1 class is right, and optionally its
        ground-truth mask for PxAP. Returns the image's best IoU per threshold (largest contour)."""
        gt_boxes = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
        if len(gt_boxes) == 0:
            raise ValueError("an image without a ground-truth box cannot be scored")
        normalized = normalize_map(score_map)
        largest = best_iou_per_threshold(boxes_from_map(normalized, self.levels), gt_boxes)
        self.hits += largest >= 0.5
        if top1_correct:
            self.hits_top1 += largest >= 0.5
        every = best_iou_per_threshold(boxes_from_map(normalized, self.levels, all_contours=True), gt_boxes)
        for row, delta in enumerate(self.iou_thresholds):
            self.hits_all_contours[row] += every >= delta
        self.images += 1
        self.top1_correct += bool(top1_correct)
        if mask is not None:
            if mask.shape != normalized.shape:
                raise ValueError(f"mask {mask.shape} and map {normalized.shape} differ in size")
            valid = mask != IGNORE_LABEL
            foreground = valid & (mask > 0)
            self.fg_histogram += np.histogram(normalized[foreground], bins=self.edges)[0]
            self.bg_histogram += np.histogram(normalized[valid & ~foreground], bins=self.edges)[0]
            self.mask_images += 1
        return largest

    def gt_known(self) -> np.ndarray:
        """GT-known localisation accuracy per threshold (largest contour, IoU ≥ 0.5)."""
        return self.hits / max(self.images, 1)

    def top1(self) -> np.ndarray:
        return self.hits_top1 / max(self.images, 1)

    def box_accuracy_all_contours(self) -> np.ndarray:
        """(len(iou_thresholds), T): accuracy with every contour's box, per δ and threshold."""
        return self.hits_all_contours / max(self.images, 1)

    def max_box_acc(self) -> float:
        """MaxBoxAcc: the best GT-known accuracy over thresholds (IoU ≥ 0.5, largest contour)."""
        return float(self.gt_known().max()) if self.images else float("nan")

    def max_box_acc_v2(self) -> float:
        """MaxBoxAccV2: the mean over δ of the best accuracy over thresholds, every contour's box."""
        return float(self.box_accuracy_all_contours().max(axis=1).mean()) if self.images else float("nan")

    def pxap(self) -> float:
        """PxAP (NaN without masks or without foreground pixels)."""
        if self.mask_images == 0 or self.fg_histogram.sum() == 0:
            return float("nan")
        true_positive = np.cumsum(self.fg_histogram[::-1])
        false_positive = np.cumsum(self.bg_histogram[::-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.nan_to_num(true_positive / (true_positive + false_positive))
        recall = true_positive / self.fg_histogram.sum()
        return float(np.sum(precision[1:] * np.diff(recall)) + precision[0] * recall[0])


def calibrated_threshold(counts: WsolCounts) -> float:
    """The threshold of the best GT-known accuracy (the lowest of equals), to apply to another split."""
    if counts.images == 0:
        raise ValueError("no image to calibrate the threshold on")
    return float(counts.levels[int(np.argmax(counts.gt_known()))])


def threshold_index(counts: WsolCounts, threshold: float) -> int:
    """Index of the threshold nearest ``threshold`` on the counts' grid."""
    return int(np.argmin(np.abs(counts.levels - threshold)))
