import numpy as np
import pytest

from wsss_steps.evaluation.metrics import (
    average_precision,
    average_precision_per_class,
    confusion_matrices,
    confusion_matrix,
    fn_rate_per_class,
    fp_rate_per_class,
    iou_per_class,
    mean_average_precision,
    mean_iou,
    precision_per_class,
    recall_per_class,
    threshold_confusion_matrices,
)


def test_hand_computed_case():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    cm = confusion_matrix(gt, pred, num_labels=4)  # class 3 absent from both
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[:3, :3] = [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    np.testing.assert_array_equal(cm, expected)
    np.testing.assert_allclose(iou_per_class(cm)[:3], [1 / 2, 1 / 3, 1 / 2])
    assert np.isnan(iou_per_class(cm)[3])
    assert mean_iou(cm) == pytest.approx(4 / 9)
    np.testing.assert_allclose(precision_per_class(cm)[:3], [1, 1 / 2, 1 / 2])
    np.testing.assert_allclose(recall_per_class(cm)[:3], [1 / 2, 1 / 2, 1])
    np.testing.assert_allclose(fp_rate_per_class(cm)[:3], [0, 1 / 3, 1 / 2])
    np.testing.assert_allclose(fn_rate_per_class(cm)[:3], [1 / 2, 1 / 3, 0])


def _loop_confusion(gt, pred, num_labels):
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
        if g != 255:
            cm[g, p] += 1
    return cm


def _loop_iou(gt, pred, num_labels):
    ious = []
    valid = gt != 255
    for c in range(num_labels):
        inter = np.sum((gt == c) & (pred == c) & valid)
        union = np.sum(((gt == c) | (pred == c)) & valid)
        ious.append(inter / union if union else np.nan)
    return np.array(ious)


def test_random_against_loops():
    rng = np.random.default_rng(0)
    num_labels = 6
    gt = rng.integers(0, num_labels - 1, size=(37, 23))  # class 5 never in gt
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, num_labels - 2, size=gt.shape)  # classes 4 and 5 never predicted
    cm = confusion_matrix(gt, pred, num_labels)
    np.testing.assert_array_equal(cm, _loop_confusion(gt, pred, num_labels))
    expected_iou = _loop_iou(gt, pred, num_labels)
    np.testing.assert_allclose(iou_per_class(cm), expected_iou, equal_nan=True)
    assert np.isnan(expected_iou[5])
    assert mean_iou(cm) == pytest.approx(np.nanmean(expected_iou))
    scores = iou_per_class(cm) + fp_rate_per_class(cm) + fn_rate_per_class(cm)
    np.testing.assert_allclose(scores[:5], 1.0)


def test_batched_matrices_equal_single():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, size=(11, 13))
    gt[0, :5] = 255
    preds = rng.integers(0, 4, size=(5, 11, 13))
    batch = confusion_matrices(gt, preds, 4)
    for b in range(5):
        np.testing.assert_array_equal(batch[b], confusion_matrix(gt, preds[b], 4))
    np.testing.assert_allclose(mean_iou(batch), [mean_iou(m) for m in batch])


def test_threshold_sweep_equals_argmax_per_threshold():
    rng = np.random.default_rng(2)
    num_labels = 5
    gt = rng.integers(0, num_labels, size=(20, 30))
    gt[rng.random(gt.shape) < 0.1] = 255
    maps = rng.random((3, 20, 30)).astype(np.float16).astype(np.float32)
    maps[:, 0, :] = np.float32(0.25)  # ties with a threshold go to background
    classes = np.array([1, 3, 4])
    best = maps.argmax(axis=0)
    thresholds = [0.5, 0.05, 0.25, 0.8, 0.3]  # unsorted on purpose
    sweep = threshold_confusion_matrices(gt, classes[best], maps.max(axis=0), thresholds, num_labels)
    for i, t in enumerate(thresholds):
        padded = np.concatenate([np.full((1, 20, 30), t, dtype=np.float32), maps])
        pred = np.r_[0, classes][padded.argmax(axis=0)]
        np.testing.assert_array_equal(sweep[i], confusion_matrix(gt, pred, num_labels))


def test_out_of_range_values_raise():
    with pytest.raises(ValueError, match="ground truth"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(np.array([0, 1]), np.array([0, 255]), 3)
    # an ignored gt pixel may carry any prediction value
    assert confusion_matrix(np.array([255, 1]), np.array([9, 1]), 3).sum() == 1


def test_average_precision_by_hand():
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.4, 0.2], [0.7, 0.35, 0.5], [0.6, 0.8, 0.1]])
    targets = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    # class 0: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2
    # class 1: ranking 0.8(+) 0.4(-) 0.35(-) 0.1(+) -> (1/1 + 2/4) / 2
    # class 2: no positive -> NaN, left out of the mean
    ap = average_precision_per_class(scores, targets)
    np.testing.assert_allclose(ap[:2], [5 / 6, 3 / 4])
    assert np.isnan(ap[2])
    assert mean_average_precision(scores, targets) == pytest.approx(19 / 24)


def test_average_precision_ties_form_one_cutoff():
    # cut-off 0.5: precision 1/2, recall 1/2; cut-off 0.2: precision 2/3, recall 1
    assert average_precision([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0.5, 0.5, 0.2], [0, 1, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert np.isnan(mean_average_precision(np.ones((2, 2)), np.zeros((2, 2))))
