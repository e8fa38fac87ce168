"""Segmentation and classification metrics: the one implementation the project uses.

Confusion matrices have ground truth on the rows and prediction on the columns, over background
(0) and the C foreground classes (1..C); ground-truth pixels equal to ``ignore`` (255) are left
out (docs/methods.md §7). Per-class scores accept one matrix (L, L) or a stack (..., L, L) and give
NaN for a class whose denominator is 0 (e.g. IoU of a class absent from both ground truth and
prediction); means are nanmeans over classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsss_steps.data.images import IGNORE_LABEL


def _valid_pixels(gt: np.ndarray, num_labels: int, ignore: int | None) -> np.ndarray:
    """A boolean mask of the pixels to count; raises on ground-truth values out of range."""
    gt = np.asarray(gt)
    valid = gt != ignore if ignore is not None else np.ones(gt.shape, dtype=bool)
    if valid.any():
        values = gt[valid]
        low, high = values.min(), values.max()
        if low < 0 or high >= num_labels:
            raise ValueError(f"ground truth holds values outside 0..{num_labels - 1} "
                             f"(and ignore={ignore}): min {low}, max {high}")
    return valid


def _check_pred(pred: np.ndarray, num_labels: int) -> None:
    if pred.size and (pred.min() < 0 or pred.max() >= num_labels):
        raise ValueError(f"prediction holds values outside 0..{num_labels - 1}: "
                         f"min {pred.min()}, max {pred.max()} (map 'uncertain' labels first)")


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_labels: int,
                     ignore: int | None = IGNORE_LABEL) -> np.ndarray:
    """The (L, L) int64 confusion matrix of one prediction (rows: ground truth, columns: prediction).

    Pixels whose ground truth is ``ignore`` are not counted; every other ground-truth value and every
    counted prediction must lie in 0..L-1 (a ValueError otherwise).
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = _valid_pixels(gt, num_labels, ignore)
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    _check_pred(p, num_labels)
    counts = np.bincount(g * num_labels + p, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def confusion_matrices(gt: np.ndarray, preds: np.ndarray, num_labels: int,
                       ignore: int | None = IGNORE_LABEL) -> np.ndarray:
    """Confusion matrices (B, L, L) of B predictions (B, *gt.shape) of one ground truth.

    One bincount for all B: prediction b's pairs are offset by b·L².
    """
    gt = np.asarray(gt)
    preds = np.asarray(preds)
    if preds.shape[1:] != gt.shape:
        raise ValueError(f"predictions {preds.shape} do not stack predictions of shape {gt.shape}")
    batch = preds.shape[0]
    valid = _valid_pixels(gt, num_labels, ignore)
    g = gt[valid].astype(np.int64)
    p = preds[:, valid].astype(np.int64)
    _check_pred(p, num_labels)
    offsets = np.arange(batch, dtype=np.int64)[:, None] * (num_labels * num_labels)
    index = offsets + g[None, :] * num_labels + p
    counts = np.bincount(index.ravel(), minlength=batch * num_labels * num_labels)
    return counts.reshape(batch, num_labels, num_labels)


def threshold_confusion_matrices(gt: np.ndarray, fg_label: np.ndarray, fg_score: np.ndarray,
                                 thresholds: Sequence[float] | np.ndarray, num_labels: int,
                                 ignore: int | None = IGNORE_LABEL) -> np.ndarray:
    """Confusion matrices (T, L, L) of a background-threshold sweep, in one pass over the pixels.

    At threshold t a pixel is predicted ``fg_label`` where ``fg_score > t`` and background (0)
    otherwise: this is argmax over [t, maps] with ties going to background, as np.argmax does.
    The comparison is made in ``fg_score``'s float type (thresholds are cast to it) so the result
    equals the argmax of maps padded with t in that type. Pixels with ``fg_label`` 0 are
    background at every threshold.

    Each pixel is counted once under (gt, fg_label, k), k = the number of thresholds below its
    score; a cumulative sum over k then gives every threshold's matrix.
    """
    gt = np.asarray(gt)
    fg_label = np.asarray(fg_label)
    fg_score = np.asarray(fg_score)
    if not gt.shape == fg_label.shape == fg_score.shape:
        raise ValueError(f"shapes differ: gt {gt.shape}, fg_label {fg_label.shape}, fg_score {fg_score.shape}")
    if not np.issubdtype(fg_score.dtype, np.floating):
        fg_score = fg_score.astype(np.float64)
    thresholds = np.asarray(thresholds, dtype=fg_score.dtype)
    if thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError("thresholds must be a non-empty 1-d sequence")
    order = np.argsort(thresholds, kind="stable")
    sorted_thresholds = thresholds[order]
    num_thresholds = thresholds.size

    valid = _valid_pixels(gt, num_labels, ignore)
    g = gt[valid].astype(np.int64)
    a = fg_label[valid].astype(np.int64)
    _check_pred(a, num_labels)
    k = np.searchsorted(sorted_thresholds, fg_score[valid], side="left").astype(np.int64)
    k[a == 0] = 0
    bins = num_thresholds + 1
    counts = np.bincount((g * num_labels + a) * bins + k, minlength=num_labels * num_labels * bins)
    counts = counts.reshape(num_labels, num_labels, bins)
    cumulative = np.cumsum(counts, axis=-1)
    head = cumulative[..., :num_thresholds]  # pixels with k <= j: background at sorted threshold j
    tail = cumulative[..., -1:] - head  # pixels with k > j: foreground at sorted threshold j
    result = tail.copy()
    result[:, 0, :] = head.sum(axis=1)
    result = np.moveaxis(result, -1, 0)  # (T, L, L) in sorted order
    out = np.empty_like(result)
    out[order] = result
    return out


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fp = cm.sum(axis=-2) - tp  # predicted c, ground truth another class
    fn = cm.sum(axis=-1) - tp  # ground truth c, predicted another class
    return tp, fp, fn


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN for classes absent from both ground truth and prediction."""
    tp, fp, fn = _counts(cm)
    return _ratio(tp, tp + fp + fn)


def mean_iou(cm: np.ndarray) -> float | np.ndarray:
    """The nanmean of the per-class IoU (a float for one matrix, an array for a stack)."""
    iou = iou_per_class(cm)
    if np.isnan(iou).all(axis=-1).any():
        raise ValueError("a confusion matrix counts no pixel: mIoU is undefined")
    result = np.nanmean(iou, axis=-1)
    return float(result) if np.ndim(result) == 0 else result


def precision_per_class(cm: np.ndarray) -> np.ndarray:
    """TP / (TP + FP); NaN for classes never predicted."""
    tp, fp, _ = _counts(cm)
    return _ratio(tp, tp + fp)


def recall_per_class(cm: np.ndarray) -> np.ndarray:
    """TP / (TP + FN); NaN for classes absent from the ground truth."""
    tp, _, fn = _counts(cm)
    return _ratio(tp, tp + fn)


def fp_rate_per_class(cm: np.ndarray) -> np.ndarray:
    """FP / (TP + FP + FN) (docs/methods.md §7); IoU + fp_rate + fn_rate = 1."""
    tp, fp, fn = _counts(cm)
    return _ratio(fp, tp + fp + fn)


def fn_rate_per_class(cm: np.ndarray) -> np.ndarray:
    """FN / (TP + FP + FN) (docs/methods.md §7)."""
    tp, fp, fn = _counts(cm)
    return _ratio(fn, tp + fp + fn)


def segmentation_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """All per-class scores of a matrix (or stack): iou, precision, recall, fp_rate, fn_rate."""
    return {"iou": iou_per_class(cm), "precision": precision_per_class(cm),
            "recall": recall_per_class(cm), "fp_rate": fp_rate_per_class(cm),
            "fn_rate": fn_rate_per_class(cm)}


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Non-interpolated average precision of one class: Σ_n (R_n − R_{n−1}) P_n over score cut-offs.

    Samples with equal scores form one cut-off (as scikit-learn's ``average_precision_score``);
    without ties this is the mean precision at the rank of each positive. NaN when ``targets`` has
    no positive.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0.5
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in length")
    num_positive = int(targets.sum())
    if num_positive == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, targets = scores[order], targets[order]
    tp = np.cumsum(targets)
    fp = np.cumsum(~targets)
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    precision = tp / (tp + fp)
    recall_step = np.diff(np.r_[0, tp]) / num_positive
    return float(np.sum(recall_step * precision))


def average_precision_per_class(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP of every class of (N, C) scores and 0/1 targets; NaN for classes without a positive."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, C)")
    return np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean AP over the classes that have at least one positive sample.

    Classes without a positive have no defined AP and are left out of the mean (a small
    validation split may lack a class); NaN if no class has a positive.
    """
    ap = average_precision_per_class(scores, targets)
    if np.isnan(ap).all():
        return float("nan")
    return float(np.nanmean(ap))
