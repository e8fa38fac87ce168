"""The CAM classifier of docs/methods.md §1: backbone → GAP → 1×1 conv without bias.

Logits = classifier(GAP(F)) = GAP(classifier(F)), so CAM_c is the 1×1 conv applied to the
feature map F, with no rescaling. Everything downstream (CAM seeds, AdvCAM, WSOL) reads maps
and logits through `features`, `cams_from_features` and `logits_from_features`.
"""

from __future__ import annotations

import torch
from torch import nn


class CamClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, kernel_size=1, bias=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Last-stage feature map (B, D, h, w) of normalised images (B, 3, H, W)."""
        return self.backbone(images)

    def cams_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Class activation maps (B, C, h, w), before ReLU."""
        return self.classifier(features)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Image-level logits (B, C)."""
        return self.logits_from_features(self.features(images))

    def forward_with_cams(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images)
        cams = self.cams_from_features(features)
        return cams.mean(dim=(2, 3)), cams

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters): the head trains with 10× the learning rate."""
        return list(self.backbone.parameters()), list(self.classifier.parameters())
