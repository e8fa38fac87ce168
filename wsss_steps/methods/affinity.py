"""Affinity labels for the inter-pixel relation network (docs/methods.md §5), one shard of a split → HDF5.

Each image gets ``affinity_label`` (H, W) uint8: 0 = background, k + 1 = class k (mask numbering),
255 = uncertain (no pair touching it is trained on).

IRN's two-threshold rule (default), from the seed maps ``cam`` (K, H, W) of the image's classes:

- fg = argmax of the seeds padded with a background score ``conf_fg``, refined by dCRF;
- bg = the same with ``conf_bg`` (< conf_fg, so it calls fewer pixels background);
- label = fg; where fg says background → 255; where fg and bg both say background → 0.

IRN uses conf_fg 0.30 / conf_bg 0.05 (the defaults), AdvCAM 0.35 / 0.15. The dCRF runs on the
compact labels 0..K (IRN's ``crf_inference_label``) and is mapped back through ``keys``.

P-NOC's saliency-aware rule (``--saliency sal.h5``, groups holding ``saliency`` (H, W) in [0, 1]):
salient = 1[saliency > ``sal_bg_threshold``] cleaned by a 2-label dCRF; a class where its seed
beats ``sal_fg_threshold`` (argmax of the seeds padded with it) inside the salient region, then
dCRF over 0..K; label = that class; salient but no class → 255; neither → 0. P-NOC's code keeps
``sal > threshold`` as salient, so background is ``saliency ≤ 0.10`` (docs/methods.md §5: "< 0.10").
"""
from __future__ import annotations

import logging

import numpy as np

from wsss_steps.data.images import IGNORE_LABEL
from wsss_steps.methods.crf import IRN_CRF, CrfSettings, crf_from_label_maps
from wsss_steps.methods.labels import padded_argmax

log = logging.getLogger("wsss_steps.affinity_labels")

STAGE = "affinity_labels"


def _refine(image: np.ndarray, compact: list[np.ndarray], num_labels: int,
            crf: CrfSettings | None) -> list[np.ndarray]:
    """The label maps of one image, refined by one dCRF (its kernels built once) or as they are."""
    return [c.astype(np.int64) for c in compact] if crf is None else crf_from_label_maps(image, compact, num_labels, crf)



def _check(image: np.ndarray, cam: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != keys.size:
        raise ValueError(f"seed maps must be (K, H, W) with K = {keys.size} keys, not {cam.shape}")
    if image.shape[:2] != cam.shape[1:]:
        raise ValueError(f"image is {image.shape[:2]}, seed maps are {cam.shape[1:]}")
    return cam, np.r_[0, keys + 1]


def two_threshold_labels(image: np.ndarray, cam: np.ndarray, keys: np.ndarray, conf_fg: float = 0.30,
                         conf_bg: float = 0.05, crf: CrfSettings | None = IRN_CRF) -> np.ndarray:
    """IRN's affinity labels (H, W) uint8 of an RGB uint8 image and its seeds (K, H, W).

    ``crf`` None skips the dCRF (not IRN; for tests and ablations).
    """
    cam, lut = _check(image, cam, keys)
    compact = [padded_argmax(cam, conf_fg), padded_argmax(cam, conf_bg)]
    fg, bg = (lut[labels] for labels in _refine(image, compact, lut.size, crf))
    label = fg.copy()
    label[fg == 0] = IGNORE_LABEL
    label[(fg == 0) & (bg == 0)] = 0
    return label.astype(np.uint8)


def saliency_labels(image: np.ndarray, cam: np.ndarray, keys: np.ndarray, saliency: np.ndarray,
                    sal_bg_threshold: float = 0.10, sal_fg_threshold: float = 0.40,
                    crf: CrfSettings | None = IRN_CRF) -> np.ndarray:
    """P-NOC's saliency-aware affinity labels (H, W) uint8 (module docstring)."""
    cam, lut = _check(image, cam, keys)
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != cam.shape[1:]:
        raise ValueError(f"saliency map is {saliency.shape}, seed maps are {cam.shape[1:]}")
    salient = _refine(image, [(saliency > sal_bg_threshold).astype(np.int64)], 2, crf)[0]
    fg = lut[_refine(image, [salient * padded_argmax(cam, sal_fg_threshold)], lut.size, crf)[0]]
    label = fg.copy()
    label[fg == 0] = IGNORE_LABEL
    label[(fg == 0) & (salient == 0)] = 0
    return label.astype(np.uint8)
