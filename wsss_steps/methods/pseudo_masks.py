"""Pseudo masks from the random walk's scores, optionally refined by dCRF (docs/methods.md §5), into HDF5.

Per image: the label map at the background threshold (argmax of [threshold, ``cam``], ties to
background; by default the ``pseudo_label`` the walk stored at its ``sem_seg_bg_thres``), with
``--crf`` refined by dCRF on the compact labels 0..K (P-NOC: 1 iteration, gt_prob 0.9; the other
kernel settings are docs/methods.md §5's, `wsss_steps.methods.crf.IRN_CRF`).

Output groups hold ``mask`` (H, W) uint8 in mask numbering (0 = background, k + 1 = class k),
``mask_onehot`` (K, H, W) uint8 (1 where ``mask`` is the key's class) and ``keys``. The one-hot
form lets `wsss_steps.evaluation.masks` score the fixed masks unchanged: with a single threshold t
in [0, 1) (``--thresholds t t 1``) its argmax over [t, one-hot] is exactly ``mask``; passing the
threshold the masks were made at records it as ``best_threshold``. ``--export-png DIR`` also
writes each mask as a VOC palette PNG.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from wsss_steps.methods.crf import IRN_CRF, CrfSettings, crf_from_labels

log = logging.getLogger("wsss_steps.pseudo_masks")

STAGE = "pseudo_masks"
PNOC_CRF = dataclasses.replace(IRN_CRF, iterations=1, gt_prob=0.9)


def refine_mask(image: np.ndarray, mask: np.ndarray, keys: np.ndarray, crf: CrfSettings = PNOC_CRF) -> np.ndarray:
    """dCRF of a mask (H, W) (mask numbering) on the compact labels 0..K; returns mask numbering."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    lut = np.r_[0, keys + 1]
    compact_of = np.full(256, -1, dtype=np.int64)
    compact_of[lut] = np.arange(lut.size)
    compact = compact_of[mask]
    if (compact < 0).any():
        raise ValueError(f"mask holds values {np.unique(mask[compact < 0]).tolist()} outside background "
                         f"and its keys {keys.tolist()}")
    return lut[crf_from_labels(image, compact, lut.size, crf)].astype(np.uint8)


def one_hot(mask: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(K, H, W) uint8: 1 where ``mask`` equals key + 1."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    return (mask[None] == (keys + 1)[:, None, None]).astype(np.uint8)
