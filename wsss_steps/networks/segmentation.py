"""Segmentation networks (docs/methods.md §6): DeepLab-v2 and DeepLabV3+ heads on the project's backbones.

- ``deeplabv2``: ASPP as in DeepLab-v2: parallel 3×3 convolutions with dilation rates 6/12/18/24
  straight to class logits, summed; on the last backbone stage (output stride 8 for the paper's
  ResNet-101).
- ``deeplabv3plus``: ASPP with a 1×1 branch, 3×3 branches at rates 6/12/18 and image pooling
  (each conv + BatchNorm + ReLU, ``width`` channels), projected; then the stride-4 decoder: the
  last backbone stage at stride 4 reduced to 48 channels, concatenated with the upsampled ASPP
  output, two 3×3 convs, a 1×1 classifier.

``SegmentationNet.forward`` returns logits over background + C classes (L = C + 1 labels) at the
input resolution (bilinear upsampling of the head's output). Any backbone of
`wsss_steps.networks.backbones` fits; the CPU default is ``small_resnet`` with a DeepLabV3+ head
and rates scaled down to its 16×16 feature maps. The backbone can start from a trained CAM
classifier's backbone (`init_backbone_from_classifier`): that network saw image-level labels only,
so the weak supervision stays weak.

Files: ``{"format": FORMAT, "meta": {...}, "state_dict": {...}}`` readable with
``torch.load(..., weights_only=True)``; the loader rebuilds the network from ``meta`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss_steps.networks.backbones import Backbone, build_backbone
from wsss_steps.networks.io import atomic_torch_save, load_classifier, read_model_file

FORMAT = "wsss_segmentation/1"
HEADS: tuple[str, ...] = ("deeplabv2", "deeplabv3plus")
PAPER_RATES: dict[str, tuple[int, ...]] = {"deeplabv2": (6, 12, 18, 24), "deeplabv3plus": (6, 12, 18)}
LOW_LEVEL_CHANNELS = 48  # DeepLabV3+'s decoder reduction of the stride-4 features


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DeepLabV2Head(nn.Module):
    """DeepLab-v2's ASPP: one 3×3 dilated conv to the class logits per rate, outputs summed."""

    def __init__(self, in_channels: int, num_labels: int, rates: Sequence[int] = PAPER_RATES["deeplabv2"]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_labels, 3, padding=rate, dilation=rate, bias=True) for rate in rates)
        for conv in self.branches:  # DeepLab's init of the classifier layers
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        features = stages[-1]
        return torch.stack([branch(features) for branch in self.branches]).sum(dim=0)


class AsppV3(nn.Module):
    """DeepLabV3's ASPP: 1×1, 3×3 at each rate and image pooling, concatenated and projected."""

    def __init__(self, in_channels: int, width: int, rates: Sequence[int], dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, width, 1)]
                                      + [_conv_bn_relu(in_channels, width, 3, rate) for rate in rates])
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, width, 1, bias=False),
                                     nn.ReLU(inplace=True))
        self.project = nn.Sequential(_conv_bn_relu(width * (len(rates) + 2), width, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [branch(x) for branch in self.branches]
        outputs.append(self.pooling(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outputs, dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the last stage + the stride-4 decoder on stage ``low_level_stage``."""

    def __init__(self, in_channels: int, low_level_channels: int, low_level_stage: int, num_labels: int,
                 rates: Sequence[int] = PAPER_RATES["deeplabv3plus"], width: int = 256):
        super().__init__()
        self.low_level_stage = low_level_stage
        self.aspp = AsppV3(in_channels, width, rates)
        self.reduce = _conv_bn_relu(low_level_channels, LOW_LEVEL_CHANNELS, 1)
        self.decoder = nn.Sequential(_conv_bn_relu(width + LOW_LEVEL_CHANNELS, width, 3),
                                     _conv_bn_relu(width, width, 3))
        self.classifier = nn.Conv2d(width, num_labels, 1)

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        low = self.reduce(stages[self.low_level_stage])
        high = F.interpolate(self.aspp(stages[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([high, low], dim=1)))


def low_level_stage_index(backbone: Backbone) -> int:
    """The last backbone stage at stride 4 (DeepLabV3+'s decoder input)."""
    candidates = [i for i, stride in enumerate(backbone.stage_strides) if stride == 4]
    if not candidates:
        raise ValueError(f"backbone {backbone.name} has no stage at stride 4 (strides {backbone.stage_strides}) "
                         "for the DeepLabV3+ decoder")
    return candidates[-1]


class SegmentationNet(nn.Module):
    """Backbone + head; ``forward`` gives logits (B, L, H, W) at the input size."""

    def __init__(self, backbone: Backbone, head: str, num_labels: int, rates: Sequence[int] | None = None,
                 width: int = 256):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown segmentation head {head!r}; choose one of {', '.join(HEADS)}")
        if num_labels < 2:
            raise ValueError(f"a segmentation network needs >= 2 labels (background + classes), not {num_labels}")
        self.backbone = backbone
        self.head_name = head
        self.num_labels = num_labels
        self.rates = tuple(int(r) for r in (rates if rates is not None else PAPER_RATES[head]))
        if not self.rates or min(self.rates) < 1:
            raise ValueError(f"ASPP rates must be positive integers, not {rates}")
        self.width = width
        if head == "deeplabv2":
            self.head: nn.Module = DeepLabV2Head(backbone.out_channels, num_labels, self.rates)
        else:
            stage = low_level_stage_index(backbone)
            self.head = DeepLabV3PlusHead(backbone.out_channels, backbone.stage_channels[stage], stage,
                                          num_labels, self.rates, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone.forward_stages(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters): DeepLab trains the head at 10× the learning rate."""
        return list(self.backbone.parameters()), list(self.head.parameters())


def build_segmentation_net(head: str, backbone: str, num_labels: int, output_stride: int = 8,
                           rates: Sequence[int] | None = None, width: int = 256, pretrained: bool = False,
                           backbone_weights: str | Path | None = None) -> SegmentationNet:
    """A segmentation network; its random init draws from torch's global generator (seed it first)."""
    return SegmentationNet(build_backbone(backbone, backbone_weights, output_stride, pretrained), head,
                           num_labels, rates, width)


def init_backbone_from_classifier(model: SegmentationNet, classifier_path: str | Path) -> dict[str, Any]:
    """Copies a trained CAM classifier's backbone weights into ``model``; returns its metadata.

    The classifier must have the same backbone and output stride (else a ValueError naming both).
    """
    classifier, meta = load_classifier(classifier_path, "cpu")
    ours = (model.backbone.name, model.backbone.output_stride)
    theirs = (classifier.backbone.name, classifier.backbone.output_stride)
    if ours != theirs:
        raise ValueError(f"classifier {classifier_path} has backbone {theirs[0]} at output stride {theirs[1]}; "
                         f"the segmentation network has {ours[0]} at output stride {ours[1]}")
    model.backbone.load_state_dict(classifier.backbone.state_dict(), strict=True)
    return meta


def save_segmentation(path: str | Path, model: SegmentationNet, meta: Mapping[str, Any]) -> None:
    """Writes the whole network and its metadata (the file alone rebuilds it)."""
    meta = dict(meta)
    meta.update(backbone=model.backbone.name, output_stride=model.backbone.output_stride, head=model.head_name,
                num_labels=model.num_labels, rates=list(model.rates), width=model.width)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "meta": meta, "state_dict": state}, path)


def load_segmentation(path: str | Path, device: torch.device | str = "cpu") -> tuple[SegmentationNet, dict[str, Any]]:
    """The segmentation network stored in ``path`` on ``device``, in eval mode, and its metadata."""
    content = read_model_file(path, FORMAT, "segmentation network")
    meta = content["meta"]
    model = build_segmentation_net(meta["head"], meta["backbone"], int(meta["num_labels"]),
                                   int(meta["output_stride"]), meta["rates"], int(meta["width"]))
    try:
        model.load_state_dict(content["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"segmentation network file {path} does not fit its own metadata: {error}") from error
    return model.to(device).eval(), meta
