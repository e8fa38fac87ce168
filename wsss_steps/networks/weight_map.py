"""The weight-map generator g of "Learning a Weight Map for Weakly-Supervised Localization"
(docs/methods.md §8, method I): a U-Net on an ImageNet encoder, one sigmoid weight per input pixel.

Encoder: a backbone without dilation (EfficientNet-Lite0 at output stride 32: stages at strides
2, 4, 8, 16, 32; the paper's ResNet has the same five). Decoder: five upsampling blocks, each a
bilinear ×2 (to the skip's size), concatenation with the encoder stage of that size (the last block
has none: it reaches the input size), then two 3×3 convolutions with BatchNorm and ReLU; a 1×1
convolution and a sigmoid give the map at the input resolution.

Files: ``{"format": FORMAT, "meta": {...}, "state_dict": {...}}`` (``torch.load(...,
weights_only=True)``); the loader rebuilds the network from ``meta`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss_steps.networks.backbones import Backbone, build_backbone
from wsss_steps.networks.io import atomic_torch_save, read_model_file

FORMAT = "wsss_weight_map/1"
DECODER_WIDTHS: tuple[int, ...] = (256, 128, 64, 32, 16)
ENCODER_OUTPUT_STRIDE = 32


class UpBlock(nn.Module):
    """Upsample to ``size``, concatenate the skip (if any), two 3×3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, size: Sequence[int], skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class ImageEmbedding(nn.Module):
    """Method II's f: a classifier's backbone, global average pooling and L2 normalisation
    (unit-length embeddings: the triplet margin of 1 is then a fixed share of their range, 0–2)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images).mean(dim=(2, 3)), dim=1)


class WeightMapGenerator(nn.Module):
    """g: images (B, 3, H, W) → weights (B, 1, H, W) in (0, 1)."""

    def __init__(self, encoder: Backbone, widths: Sequence[int] = DECODER_WIDTHS):
        super().__init__()
        if len(encoder.stage_channels) != len(widths):
            raise ValueError(f"the encoder has {len(encoder.stage_channels)} stages; the decoder needs "
                             f"{len(widths)} (one skip per stage but the last, then the input size)")
        self.encoder = encoder
        self.widths = tuple(widths)
        skips = list(encoder.stage_channels[:-1])[::-1] + [0]
        channels = [encoder.stage_channels[-1], *widths]
        self.blocks = nn.ModuleList(UpBlock(channels[i], skips[i], channels[i + 1]) for i in range(len(widths)))
        self.out = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        stages = self.encoder.forward_stages(images)
        x = stages[-1]
        skips = stages[:-1][::-1]
        for index, block in enumerate(self.blocks):
            if index < len(skips):
                x = block(x, skips[index].shape[2:], skips[index])
            else:
                x = block(x, images.shape[2:])
        return torch.sigmoid(self.out(x))

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(encoder, decoder) parameters."""
        decoder = [p for name, p in self.named_parameters() if not name.startswith("encoder.")]
        return list(self.encoder.parameters()), decoder


def build_weight_map_generator(backbone: str = "efficientnet_lite0", pretrained: bool = True,
                               backbone_weights: str | Path | None = None,
                               widths: Sequence[int] = DECODER_WIDTHS) -> WeightMapGenerator:
    """The generator; its random init draws from torch's global generator (seed it first)."""
    if backbone != "efficientnet_lite0":
        raise ValueError(f"the weight-map generator's encoder is efficientnet_lite0 (undilated), not {backbone!r}")
    return WeightMapGenerator(build_backbone(backbone, backbone_weights, ENCODER_OUTPUT_STRIDE, pretrained), widths)


def save_weight_map_generator(path: str | Path, model: WeightMapGenerator, meta: Mapping[str, Any]) -> None:
    meta = dict(meta)
    meta.update(backbone=model.encoder.name, widths=list(model.widths))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "meta": meta, "state_dict": state}, path)


def load_weight_map_generator(path: str | Path, device: torch.device | str = "cpu"
                              ) -> tuple[WeightMapGenerator, dict[str, Any]]:
    """The generator stored in ``path`` on ``device``, in eval mode, and its metadata."""
    content = read_model_file(path, FORMAT, "weight-map generator")
    meta = content["meta"]
    model = build_weight_map_generator(meta["backbone"], pretrained=False, widths=meta["widths"])
    try:
        model.load_state_dict(content["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"weight-map generator file {path} does not fit its own metadata: {error}") from error
    return model.to(device).eval(), meta
