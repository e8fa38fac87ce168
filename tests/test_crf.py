import dataclasses

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from pydensecrf.utils import unary_from_labels

from wsss_steps.methods.crf import (
    DEEPLAB_CRF,
    IRN_CRF,
    CrfSettings,
    crf_from_label_maps,
    crf_from_labels,
    crf_from_probs,
)


def _edge_scene(height=40, width=60, edge=30, seed=0):
    """A red left half and a blue right half with mild noise; truth = 0 left, 1 right."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.int64)
    image[:, :edge] = (200, 40, 40)
    image[:, edge:] = (40, 40, 200)
    image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((height, width), dtype=np.int64)
    truth[:, edge:] = 1
    noisy = np.zeros_like(truth)
    noisy[:, edge + 6:] = 1  # the edge shifted by 6 pixels
    flips = rng.random(truth.shape) < 0.1
    noisy[flips] = 1 - noisy[flips]
    return image, truth, noisy


def test_presets_hold_methods_values():
    assert dataclasses.astuple(IRN_CRF) == (10, 3, 3, 50, 5, 10, 0.7)
    assert (DEEPLAB_CRF.iterations, DEEPLAB_CRF.gaussian_sxy, DEEPLAB_CRF.gaussian_compat,
            DEEPLAB_CRF.bilateral_sxy, DEEPLAB_CRF.bilateral_srgb, DEEPLAB_CRF.bilateral_compat) == (10, 1, 3, 67, 3, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        IRN_CRF.iterations = 1  # type: ignore[misc]
    with pytest.raises(ValueError):
        CrfSettings(10, 3, 3, 50, 5, 10, gt_prob=1.0)


def test_labels_snap_to_colour_edge():
    image, truth, noisy = _edge_scene()
    before = (noisy == truth).mean()
    refined = crf_from_labels(image, noisy, 2, IRN_CRF)
    after = (refined == truth).mean()
    assert refined.shape == truth.shape and refined.dtype == np.int64
    assert before < 0.85
    assert after > 0.98 and after > before + 0.1


def test_labels_accept_non_contiguous_views():
    image, _, noisy = _edge_scene()
    flipped = image[:, ::-1]  # a view pydensecrf cannot read directly
    assert not flipped.flags.c_contiguous
    expected = crf_from_labels(np.ascontiguousarray(flipped), np.ascontiguousarray(noisy[:, ::-1]), 2)
    np.testing.assert_array_equal(crf_from_labels(flipped, noisy[:, ::-1], 2), expected)


def _one_crf_per_map(image, labels, num_labels, settings):
    """The straightforward version: a new dense CRF, kernels and all, for every label map."""
    height, width = labels.shape
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(
        unary_from_labels(labels, num_labels, gt_prob=settings.gt_prob, zero_unsure=False), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=settings.gaussian_sxy, compat=settings.gaussian_compat)
    crf.addPairwiseBilateral(sxy=settings.bilateral_sxy, srgb=settings.bilateral_srgb, rgbim=image,
                             compat=settings.bilateral_compat)
    q = np.asarray(crf.inference(settings.iterations)).reshape(num_labels, height, width)
    return np.argmax(q, axis=0)


def test_a_sweeps_maps_share_the_kernels_and_equal_one_crf_each():
    """A threshold sweep builds the pairwise kernels once (and refines a repeated map once); every
    map's result equals its own CRF's, bitwise, also after maps of other labels."""
    image, truth, noisy = _edge_scene(48, 64, 30, seed=3)
    rng = np.random.default_rng(1)
    maps = [noisy, truth, (rng.random(truth.shape) < 0.3).astype(np.int64) * 2, noisy.copy(),
            np.zeros_like(truth)]
    refined = crf_from_label_maps(image, maps, 3, IRN_CRF)
    assert len(refined) == len(maps)
    for labels, result in zip(maps, refined, strict=True):
        np.testing.assert_array_equal(result, _one_crf_per_map(image, labels, 3, IRN_CRF))
    assert not np.array_equal(refined[0], refined[2])  # the maps' own results, not the first's
    assert crf_from_label_maps(image, [], 3) == []


def test_single_label_and_bad_input():
    image, _, _ = _edge_scene(8, 8, 4)
    np.testing.assert_array_equal(crf_from_labels(image, np.zeros((8, 8), dtype=int), 1), 0)
    with pytest.raises(ValueError):
        crf_from_labels(image, np.full((8, 8), 2), 2)
    with pytest.raises(ValueError):
        crf_from_labels(image.astype(np.float32), np.zeros((8, 8), dtype=int), 2)


@pytest.mark.parametrize("settings", [DEEPLAB_CRF, IRN_CRF])
def test_probs_sum_to_one_and_improve(settings):
    image, truth, noisy = _edge_scene()
    probs = np.stack([np.where(noisy == 0, 0.6, 0.4), np.where(noisy == 1, 0.6, 0.4)])
    q = crf_from_probs(image, probs, settings)
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-5)
    assert (q.argmax(axis=0) == truth).mean() > (noisy == truth).mean() + 0.1
