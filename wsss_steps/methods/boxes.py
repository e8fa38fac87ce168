"""Boxes from a localisation map (docs/methods.md §8), as wsolevaluation (Choe et al., CVPR 2020) makes them.

A map is normalised to [0, 1] (negative values to 0, then division by the maximum: ψ of docs/methods.md
and the weight-map paper's "max/10"; wsolevaluation subtracts the minimum first, the same wherever
a map has a zero). At a threshold t the map, as 8-bit grey values, is binarised where it exceeds
t × its maximum (OpenCV's THRESH_BINARY), its contours are found (RETR_TREE), and the bounding box
of the largest contour (or of every contour) is taken; (0, 0, 0, 0) where nothing exceeds t.

Boxes are inclusive pixel coordinates (x_min, y_min, x_max, y_max), as the datasets' ``boxes.csv``;
IoU counts pixels ((x_max − x_min + 1) · (y_max − y_min + 1)). wsolevaluation's boxes are
(x, y, x + w, y + h) with the same +1 areas, one pixel wider than the contour: ours are the
contour's exact extent.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

EMPTY_BOX = np.zeros(4, dtype=np.int64)


def normalize_map(score_map: np.ndarray) -> np.ndarray:
    """ReLU, then division by the maximum; a map without a positive value becomes all zeros."""
    score_map = np.nan_to_num(np.asarray(score_map, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    score_map = np.maximum(score_map, 0.0)
    high = float(score_map.max()) if score_map.size else 0.0
    return score_map / high if high > 0 else np.zeros_like(score_map)


def binarize(score_map: np.ndarray, level: float) -> np.ndarray:
    """uint8 0/255 of a map normalised to [0, 1] where, as 8-bit grey, it exceeds ``level`` × its maximum."""
    grey = np.clip(score_map * 255.0, 0, 255).astype(np.uint8)
    return cv2.threshold(grey, int(level * int(grey.max())), 255, cv2.THRESH_BINARY)[1]


def boxes_from_map(score_map: np.ndarray, levels: Sequence[float], all_contours: bool = False
                   ) -> list[np.ndarray]:
    """Per threshold, the predicted boxes (n, 4) of a map normalised to [0, 1]: the largest contour's
    box, or with ``all_contours`` every contour's box; (0, 0, 0, 0) where nothing exceeds it."""
    result = []
    for level in levels:
        binary = binarize(score_map, level)
        contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            result.append(EMPTY_BOX[None])
            continue
        if not all_contours:
            contours = [max(contours, key=cv2.contourArea)]
        rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64)  # x, y, w, h
        result.append(np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1,
                                rects[:, 1] + rects[:, 3] - 1], axis=1))
    return result


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of inclusive pixel boxes (x_min, y_min, x_max, y_max)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)
