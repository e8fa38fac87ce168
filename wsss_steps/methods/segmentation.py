"""Segmentation inference (docs/methods.md §6): multi-scale + flip, dCRF, HDF5 and VOC palette PNGs.

Per image: for each scale the image is resized (bicubic), run with its horizontal flip, the
logits are resized back to the image size and turned into probabilities (softmax over background
+ C classes); the probabilities of all scales and flips are averaged. ``mask`` is their argmax;
with ``--crf`` ``mask_crf`` is the argmax of DeepLab's dCRF on them (10 iterations,
Gaussian(sxy 1, compat 3), Bilateral(sxy 67, srgb 3, compat 4): `wsss_steps.methods.crf.DEEPLAB_CRF`).
No image-level label is used: every class can be predicted. The network runs under the step's
`Numerics` (bf16 / fp16 autocast, channels-last: opt-in); its logits are cast to float32 first.

Output groups hold ``mask`` and ``mask_crf`` (H, W) uint8 in mask numbering (0 = background,
k + 1 = class k), ``keys`` (the image's labels, for reference) and the image size. `wsss_steps.export_png` writes
them as VOC palette PNGs (what the PASCAL VOC evaluation server accepts).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss_steps.methods.cams import resize_batch
from wsss_steps.methods.crf import DEEPLAB_CRF, crf_from_probs
from wsss_steps.networks.inputs import image_to_tensor
from wsss_steps.networks.numerics import FP32, Numerics
from wsss_steps.networks.segmentation import SegmentationNet

log = logging.getLogger("wsss_steps.segment")

STAGE = "segmentation"
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)  # docs/methods.md §6


@torch.no_grad()
def predict_probs(model: SegmentationNet, image: torch.Tensor, scales: Sequence[float] = DEFAULT_SCALES,
                  flip: bool = True, numerics: Numerics = FP32) -> np.ndarray:
    """Label probabilities (L, H, W) float32 of one normalised image (1, 3, H, W), averaged over
    scales and flips. The model must be in eval mode (and with ``numerics.channels_last``
    converted by `Numerics.prepare`)."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, 3, H, W), not {tuple(image.shape)}")
    if not scales:
        raise ValueError("at least one scale is needed")
    height, width = image.shape[-2:]
    total = torch.zeros((model.num_labels, height, width), dtype=torch.float32, device=image.device)
    count = 0
    for scale in scales:
        batch = resize_batch(image, scale)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        with numerics.autocast(batch.device):
            logits = model(numerics.layout(batch))
        logits = logits.float()
        if flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        total += torch.softmax(logits, dim=1).sum(dim=0)
        count += logits.shape[0]
    return (total / count).cpu().numpy()


def predict_image(model: SegmentationNet, image: np.ndarray, device: torch.device | str,
                  scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True,
                  crf: bool = True, numerics: Numerics = FP32) -> dict[str, np.ndarray]:
    """``mask`` (and with ``crf`` ``mask_crf``) (H, W) uint8 of an RGB uint8 image (H, W, 3)."""
    probs = predict_probs(model, image_to_tensor(image, device), scales, flip, numerics)
    out = {"mask": np.argmax(probs, axis=0).astype(np.uint8)}
    if crf:
        out["mask_crf"] = np.argmax(crf_from_probs(image, probs, DEEPLAB_CRF), axis=0).astype(np.uint8)
    return out
