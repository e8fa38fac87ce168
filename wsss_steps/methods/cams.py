"""Multi-scale + flip CAM inference (docs/methods.md §1), the one implementation all seed methods use.

For each scale the image is resized, run with its horizontal flip, the maps of the label classes
are ReLU'd, un-flipped and summed, resized to the image size and to stride 4 (the random walk's
resolution), summed over scales, then each class map is divided by its max (+1e-5). The network
runs under the step's `Numerics` (bf16 / fp16 autocast, channels-last: opt-in); its maps are cast
to float32 before they are merged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wsss_steps.data.images import read_image
from wsss_steps.data.manifest import ImageRecord
from wsss_steps.networks.classifier import CamClassifier
from wsss_steps.networks.inputs import image_to_tensor
from wsss_steps.networks.numerics import FP32, Numerics

MAX_NORM_EPS = 1e-5


def strided_size(height: int, width: int, stride: int = 4) -> tuple[int, int]:
    return math.ceil(height / stride), math.ceil(width / stride)


def resize_batch(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Resizes (B, 3, H, W) images by ``scale`` (bicubic as IRN's rescale; identity at 1)."""
    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False)


def max_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Divides each map of (..., H, W) by its own max + 1e-5 (maps are already ≥ 0)."""
    return maps / (maps.flatten(-2).amax(dim=-1)[..., None, None] + MAX_NORM_EPS)


@dataclass
class ScaleMerger:
    """Sums per-scale maps resized to the full and the stride-4 resolution."""

    height: int
    width: int

    def __post_init__(self) -> None:
        self.full: torch.Tensor | None = None
        self.stride4: torch.Tensor | None = None

    def add(self, maps: torch.Tensor, weight: float = 1.0) -> None:
        """Adds (K, h, w) non-negative maps computed at some scale."""
        maps = maps[None].float()
        full = F.interpolate(maps, size=(self.height, self.width), mode="bilinear", align_corners=False)[0]
        low = F.interpolate(maps, size=strided_size(self.height, self.width), mode="bilinear",
                            align_corners=False)[0]
        self.full = weight * full if self.full is None else self.full + weight * full
        self.stride4 = weight * low if self.stride4 is None else self.stride4 + weight * low

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Max-normalised (K, H, W) and (K, H/4, W/4) float32 arrays."""
        assert self.full is not None and self.stride4 is not None, "no scale was added"
        return (max_normalize(self.full).cpu().numpy().astype(np.float32),
                max_normalize(self.stride4).cpu().numpy().astype(np.float32))


@torch.no_grad()
def multiscale_cams(model: CamClassifier, image: torch.Tensor, keys: Sequence[int],
                    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True,
                    numerics: Numerics = FP32) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of the classes ``keys`` for one normalised image (1, 3, H, W) on the model's device.

    Returns max-normalised maps at full resolution (K, H, W) and at stride 4 (K, ⌈H/4⌉, ⌈W/4⌉).
    The model must be in eval mode (BatchNorm statistics frozen); with ``numerics.channels_last``,
    converted by `Numerics.prepare`.
    """
    height, width = image.shape[-2:]
    merger = ScaleMerger(height, width)
    key_index = torch.as_tensor(list(keys), dtype=torch.long, device=image.device)
    if len(key_index) == 0:
        h4, w4 = strided_size(height, width)
        return np.zeros((0, height, width), np.float32), np.zeros((0, h4, w4), np.float32)
    for scale in scales:
        batch = resize_batch(image, scale)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        with numerics.autocast(batch.device):
            cams = model.cams_from_features(model.features(numerics.layout(batch)))
        cams = F.relu(cams.float())[:, key_index]
        maps = cams[0] + cams[1].flip(-1) if flip else cams[0]
        merger.add(maps)
    return merger.result()


class CamSeeds:
    """The per-image compute function of `write_seed_shard` for CAM seeds (method ``cam``)."""

    def __init__(self, model: CamClassifier, device: torch.device, scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
                 flip: bool = True, numerics: Numerics = FP32):
        self.model = model
        self.device = device
        self.scales = tuple(scales)
        self.flip = flip
        self.numerics = numerics

    def __call__(self, record: ImageRecord) -> dict[str, np.ndarray]:
        image = image_to_tensor(read_image(record.image_path), self.device)
        full, stride4 = multiscale_cams(self.model, image, record.labels, self.scales, self.flip, self.numerics)
        return {"cam": full, "cam_stride4": stride4}
