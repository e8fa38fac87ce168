"""Class-agnostic saliency networks (docs/methods.md §4): one foreground logit per pixel.

- ``c2am`` (C²AM, C²AM-H): the backbone's last two stages (resized to the last one's grid and
  concatenated) are the features F; a ``head_kernel`` × ``head_kernel`` convolution without bias
  and a one-channel BatchNorm give the logit, P = sigmoid. The reference code (CCAM, P-NOC) uses a
  3 × 3 kernel with BatchNorm (the default); docs/methods.md §4 writes a 1 × 1 convolution
  (``head_kernel`` 1). ``flip_polarity`` (set after training, `methods.saliency`) makes the
  saliency 1 − P (or the negated logit).
- ``deeplabv3plus`` (the refinement network, PoolNet's role): DeepLabV3+'s ASPP and stride-4
  decoder with one output channel, logits at the input resolution, trained with BCE on the
  pseudo-saliency masks.

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
from wsss_steps.networks.segmentation import PAPER_RATES, DeepLabV3PlusHead, low_level_stage_index

FORMAT = "wsss_saliency/1"
HEADS: tuple[str, ...] = ("c2am", "deeplabv3plus")


class SaliencyNet(nn.Module):
    """Backbone + a one-logit head; ``forward`` gives (logits (B, 1, h, w), features (B, C, h, w))
    for ``c2am`` (the feature grid) and (logits at the input size, None) for ``deeplabv3plus``."""

    def __init__(self, backbone: Backbone, head: str = "c2am", head_kernel: int = 3,
                 rates: Sequence[int] | None = None, width: int = 256):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown saliency head {head!r}; choose one of {', '.join(HEADS)}")
        if head_kernel not in (1, 3):
            raise ValueError(f"head_kernel must be 1 or 3, not {head_kernel}")
        self.backbone = backbone
        self.head_name = head
        self.head_kernel = head_kernel
        self.rates = tuple(int(r) for r in (rates if rates is not None else PAPER_RATES["deeplabv3plus"]))
        self.width = width
        self.flip_polarity = False
        if head == "c2am":
            channels = backbone.stage_channels[-1] + backbone.stage_channels[-2]
            self.head: nn.Module = nn.Sequential(
                nn.Conv2d(channels, 1, head_kernel, padding=head_kernel // 2, bias=False), nn.BatchNorm2d(1))
        else:
            stage = low_level_stage_index(backbone)
            self.head = DeepLabV3PlusHead(backbone.out_channels, backbone.stage_channels[stage], stage, 1,
                                          self.rates, width)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        stages = self.backbone.forward_stages(images)
        if self.head_name == "c2am":
            last, previous = stages[-1], stages[-2]
            if previous.shape[-2:] != last.shape[-2:]:
                previous = F.interpolate(previous, size=last.shape[-2:], mode="bilinear", align_corners=False)
            features = torch.cat([last, previous], dim=1)
            return self.head(features), features
        logits = self.head(stages)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False), None

    def saliency_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of the salient side (B, 1, h, w): negated when the polarity is flipped."""
        logits, _ = self(images)
        return -logits if self.flip_polarity else logits

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return list(self.backbone.parameters()), list(self.head.parameters())


def build_saliency_net(head: str, backbone: str, output_stride: int = 16, head_kernel: int = 3,
                       pretrained: bool = True, backbone_weights: str | Path | None = None,
                       rates: Sequence[int] | None = None, width: int = 256) -> SaliencyNet:
    """A saliency network; its random init draws from torch's global generator (seed it first)."""
    return SaliencyNet(build_backbone(backbone, backbone_weights, output_stride, pretrained), head, head_kernel,
                       rates, width)


def save_saliency(path: str | Path, model: SaliencyNet, meta: Mapping[str, Any]) -> None:
    """Writes the network, its polarity and metadata (the file alone rebuilds it)."""
    meta = dict(meta)
    meta.update(backbone=model.backbone.name, output_stride=model.backbone.output_stride, head=model.head_name,
                head_kernel=model.head_kernel, rates=list(model.rates), width=model.width,
                flip_polarity=bool(model.flip_polarity))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "meta": meta, "state_dict": state}, path)


def load_saliency(path: str | Path, device: torch.device | str = "cpu") -> tuple[SaliencyNet, dict[str, Any]]:
    """The saliency network stored in ``path`` on ``device``, in eval mode, and its metadata."""
    content = read_model_file(path, FORMAT, "saliency network")
    meta = content["meta"]
    model = build_saliency_net(meta["head"], meta["backbone"], int(meta["output_stride"]), int(meta["head_kernel"]),
                               pretrained=False, rates=meta["rates"], width=int(meta["width"]))
    try:
        model.load_state_dict(content["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"saliency network file {path} does not fit its own metadata: {error}") from error
    model.flip_polarity = bool(meta["flip_polarity"])
    return model.to(device).eval(), meta
