"""Dense CRF (pydensecrf): the one implementation the project uses.

Two entry points: `crf_from_labels` refines a hard label map (IRN's ``crf_inference_label``, for
seeds and affinity labels, docs/methods.md §5; `crf_from_label_maps` several maps of one image)
and `crf_from_probs` refines class probabilities (DeepLab's test-time CRF, docs/methods.md §6). Other settings (e.g. P-NOC's 1-iteration pseudo-mask
CRF with gt_prob 0.9) are ``dataclasses.replace(IRN_CRF, iterations=1, gt_prob=0.9)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

PROB_CLIP = 1e-5  # pydensecrf's unary_from_softmax default, used by DeepLab's CRF


@dataclass(frozen=True)
class CrfSettings:
    """Mean-field iterations, the two pairwise kernels and the label confidence.

    ``gt_prob`` is the probability given to the input label in `crf_from_labels`; `crf_from_probs`
    does not use it.
    """

    iterations: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    gt_prob: float = 0.7

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"CRF iterations must be >= 0, not {self.iterations}")
        if not 0.0 < self.gt_prob < 1.0:
            raise ValueError(f"CRF gt_prob must lie in (0, 1), not {self.gt_prob}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CRF {name} must be > 0, not {getattr(self, name)}")


# docs/methods.md §5: seeds and affinity labels (IRN).
IRN_CRF = CrfSettings(iterations=10, gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=50,
                      bilateral_srgb=5, bilateral_compat=10, gt_prob=0.7)
# docs/methods.md §6: DeepLab's test-time CRF on the segmentation network's probabilities.
DEEPLAB_CRF = CrfSettings(iterations=10, gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67,
                          bilateral_srgb=3, bilateral_compat=4)


def _check_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    image = np.asarray(image)
    if image.shape != (height, width, 3):
        raise ValueError(f"CRF image has shape {image.shape}, expected {(height, width, 3)}")
    if image.dtype != np.uint8:
        raise ValueError(f"CRF image must be uint8 RGB, not {image.dtype}")
    # pydensecrf reads the raw buffer: a view (crop, flip, channel swap) must be copied.
    return np.ascontiguousarray(image)


class _DenseCrf:
    """The dense CRF of one image: its two pairwise kernels (the bilateral one's permutohedral
    lattice, most of a call's cost at 10 iterations) are built once, then `infer` runs mean field
    from any number of unaries. Mean field starts from the unary alone, so each result equals a
    CRF built for that unary (tests/test_crf.py)."""

    def __init__(self, image: np.ndarray, num_labels: int, settings: CrfSettings):
        self.height, self.width = image.shape[:2]
        self.num_labels, self.iterations = num_labels, settings.iterations
        self.crf = dcrf.DenseCRF2D(self.width, self.height, num_labels)
        self.crf.addPairwiseGaussian(sxy=settings.gaussian_sxy, compat=settings.gaussian_compat)
        self.crf.addPairwiseBilateral(sxy=settings.bilateral_sxy, srgb=settings.bilateral_srgb, rgbim=image,
                                      compat=settings.bilateral_compat)

    def infer(self, unary: np.ndarray) -> np.ndarray:
        self.crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
        q = self.crf.inference(self.iterations)
        return np.asarray(q, dtype=np.float32).reshape(self.num_labels, self.height, self.width)


def crf_from_label_maps(image: np.ndarray, label_maps: Sequence[np.ndarray], num_labels: int,
                        settings: CrfSettings = IRN_CRF) -> list[np.ndarray]:
    """`crf_from_labels` of several label maps of one image (a threshold sweep, IRN's two
    thresholds): the pairwise kernels are built once and a map equal to an earlier one is not
    refined again; each result equals `crf_from_labels` of its map."""
    image = np.asarray(image)
    refined: list[np.ndarray] = []
    crf: _DenseCrf | None = None
    for index, labels in enumerate(label_maps):
        labels = _check_labels(labels, num_labels)
        height, width = labels.shape
        image = _check_image(image, height, width)
        earlier = next((i for i in range(index) if np.array_equal(label_maps[i], labels)), None)
        if earlier is not None:
            refined.append(refined[earlier])
        elif num_labels == 1:  # one label: nothing to decide (and unary_from_labels would divide by 0)
            refined.append(np.zeros((height, width), dtype=np.int64))
        else:
            crf = crf if crf is not None else _DenseCrf(image, num_labels, settings)
            unary = unary_from_labels(labels.astype(np.int64), num_labels, gt_prob=settings.gt_prob,
                                      zero_unsure=False)
            refined.append(np.argmax(crf.infer(unary), axis=0).astype(np.int64))
    return refined


def _check_labels(labels: np.ndarray, num_labels: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"CRF labels must be (H, W), not {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"CRF labels must be integers, not {labels.dtype}")
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, not {num_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"CRF labels hold values outside 0..{num_labels - 1}")
    return labels


def crf_from_labels(image: np.ndarray, labels: np.ndarray, num_labels: int,
                    settings: CrfSettings = IRN_CRF) -> np.ndarray:
    """Refines a label map (H, W) of values 0..num_labels-1 on an RGB uint8 image (H, W, 3).

    Unary: ``gt_prob`` on the given label, the rest spread evenly over the others (pydensecrf's
    ``unary_from_labels`` with ``zero_unsure=False``, as IRN). Returns the argmax labels (H, W) int64.
    Pass compact labels (0 = background, 1..K = the image's classes) so num_labels stays small.
    """
    return crf_from_label_maps(image, [labels], num_labels, settings)[0]


def crf_from_probs(image: np.ndarray, probs: np.ndarray, settings: CrfSettings = DEEPLAB_CRF) -> np.ndarray:
    """Refines class probabilities (L, H, W) on an RGB uint8 image (H, W, 3).

    Unary: −log p with p clipped to [1e-5, 1] (DeepLab's CRF). Returns the mean-field marginals
    (L, H, W) float32, which sum to 1 over L at every pixel.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"CRF probabilities must be (L, H, W) with L >= 1, not {probs.shape}")
    num_labels, height, width = probs.shape
    image = _check_image(image, height, width)
    if not np.isfinite(probs).all():
        raise ValueError("CRF probabilities hold NaN or infinite values")
    unary = -np.log(np.clip(probs.astype(np.float32), PROB_CLIP, 1.0)).reshape(num_labels, -1)
    return _DenseCrf(image, num_labels, settings).infer(unary)
