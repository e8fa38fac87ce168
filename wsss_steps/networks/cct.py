"""Cross-consistency training's network (docs/methods.md §10): the segmentation network split into a
shared encoder and its main decoder, and K auxiliary decoders that read perturbed encoder features.

The split of `wsss_steps.networks.segmentation.SegmentationNet`:

- ``deeplabv3plus``: encoder = backbone + ASPP + the stride-4 decoder's convolutions (``width``
  channels); main decoder = the 1×1 classifier; each auxiliary decoder is another 1×1 classifier.
- ``deeplabv2``: encoder = the backbone (its last stage); main decoder = the ASPP head (dilated
  3×3 convolutions to the logits, summed); each auxiliary decoder is another such head.

CCT's decoders all have one architecture (a 1×1 convolution and sub-pixel upsampling); here each
auxiliary decoder has the main decoder's architecture, and every decoder's logits are upsampled
bilinearly to the input size, as the segmentation network's are.

Perturbations (CCT's code ``models/decoders.py``; their randomness comes from torch's global
generator, which the training loop reseeds every epoch, so a resumed training is bitwise the same):
``vat`` (I-VAT), ``drop`` (spatial dropout), ``cutout`` (guided cutout), ``context_masking``,
``object_masking``, ``feature_drop``, ``feature_noise``. The foreground-guided ones read the main
decoder's prediction on the same images: argmax > 0 (any class) is foreground.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss_steps.networks.segmentation import DeepLabV2Head, SegmentationNet

# CCT's configs/config.json: decoders of each perturbation (K = 30 in all).
PAPER_DECODERS: dict[str, int] = {"vat": 2, "drop": 6, "cutout": 6, "context_masking": 2, "object_masking": 2,
                                  "feature_drop": 6, "feature_noise": 6}
PERTURBATIONS: tuple[str, ...] = tuple(PAPER_DECODERS)
# CCT's values (config.json and decoders.py). FEATURE_DROP_GAMMA is the code's range; the paper
# writes U(0.6, 0.9).
DROP_RATE = 0.5
ERASE = 0.4
CUTOUT_MIN_CONTOUR_POINTS = 50  # objects whose outer contour has more points (CCT: c.shape[0] > 50)
VAT_XI = 1e-6
VAT_EPS = 2.0
VAT_ITERATIONS = 1
UNIFORM_RANGE = 0.3
FEATURE_DROP_GAMMA = (0.7, 0.9)


def perturbation_settings() -> dict[str, Any]:
    """The perturbations' constants (part of a CCT training's identity)."""
    return {"drop_rate": DROP_RATE, "erase": ERASE, "cutout_min_contour_points": CUTOUT_MIN_CONTOUR_POINTS,
            "vat_xi": VAT_XI, "vat_eps": VAT_EPS, "vat_iterations": VAT_ITERATIONS, "uniform_range": UNIFORM_RANGE,
            "feature_drop_gamma": list(FEATURE_DROP_GAMMA)}


def _uniform(low: float, high: float, size: tuple[int, ...] = (), device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.rand(size, device=device) * (high - low) + low


def feature_noise(z: torch.Tensor, uniform_range: float = UNIFORM_RANGE, noise: torch.Tensor | None = None) -> torch.Tensor:
    """z + z ⊙ N, N ~ U(−r, r) of shape (C, H, W), one draw for the whole batch (as CCT)."""
    if noise is None:
        noise = _uniform(-uniform_range, uniform_range, tuple(z.shape[1:]), z.device)
    return z + z * noise.to(z.dtype).unsqueeze(0)


def feature_dropout(z: torch.Tensor, gamma: float | None = None,
                    gamma_range: tuple[float, float] = FEATURE_DROP_GAMMA) -> torch.Tensor:
    """Drops the most activated regions: the attention map (channel mean) divided by its maximum
    per image; positions at or above γ (γ ~ U(gamma_range), one draw per batch) are zeroed."""
    if gamma is None:
        gamma = float(_uniform(*gamma_range))
    attention = z.mean(dim=1, keepdim=True)
    peak = attention.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    return z * (attention < peak * gamma).to(z.dtype)


def spatial_dropout(z: torch.Tensor, p: float = DROP_RATE) -> torch.Tensor:
    """Dropout of whole channels (nn.Dropout2d), rescaled by 1 / (1 − p)."""
    return F.dropout2d(z, p, training=True)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) {0, 1} → (B, 1, h, w) by nearest neighbour (CCT's F.interpolate(mode='nearest'))."""
    return F.interpolate(mask.unsqueeze(1).float(), size=size, mode="nearest")


def object_masking(z: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Keeps the context: zeroes the features where the main decoder predicts an object."""
    return z * (1 - _resize_mask(foreground, tuple(z.shape[-2:]))).to(z.dtype)


def context_masking(z: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Keeps the objects: zeroes the features of the predicted background (the context)."""
    return z * _resize_mask(foreground, tuple(z.shape[-2:])).to(z.dtype)


def cutout_mask(foreground: torch.Tensor, erase: float = ERASE,
                min_points: int = CUTOUT_MIN_CONTOUR_POINTS) -> torch.Tensor:
    """CCT's guided cutout at the prediction's resolution: for each predicted object (an outer
    contour of the foreground with more than ``min_points`` points), a box of ``erase`` × its
    bounding box's width and height, at a random place inside that box, is 0; elsewhere 1."""
    masks = []
    for image in foreground.detach().cpu().numpy().astype(np.uint8):
        keep = np.ones_like(image, dtype=np.float32)
        contours, _ = cv2.findContours(image, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            if contour.shape[0] <= min_points:
                continue
            points = contour.reshape(-1, 2)
            (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
            width, height = int(x1 - x0), int(y1 - y0)
            # random.randint(0, n) is inclusive of n
            dx = int(torch.randint(0, int(width * (1 - erase)) + 1, ()))
            dy = int(torch.randint(0, int(height * (1 - erase)) + 1, ()))
            keep[y0 + dy:y0 + dy + int(height * erase), x0 + dx:x0 + dx + int(width * erase)] = 0
        masks.append(keep)
    return torch.from_numpy(np.stack(masks)).to(foreground.device)


def guided_cutout(z: torch.Tensor, foreground: torch.Tensor, erase: float = ERASE) -> torch.Tensor:
    return z * _resize_mask(cutout_mask(foreground, erase), tuple(z.shape[-2:])).to(z.dtype)


def _l2_normalize(d: torch.Tensor) -> torch.Tensor:
    # Relative to the dtype's smallest normal number, not CCT's + 1e-8: at ξ = 1e-6 the gradient's
    # norm is ~1e-13, which CCT's floor would shrink to nothing.
    norm = d.flatten(1).norm(dim=1).clamp_min(torch.finfo(d.dtype).tiny)
    return d / norm.view(-1, *([1] * (d.dim() - 1)))


def vat_perturbation(z: torch.Tensor, decoder: nn.Module, xi: float = VAT_XI, eps: float = VAT_EPS,
                     iterations: int = VAT_ITERATIONS) -> torch.Tensor:
    """I-VAT's adversarial perturbation r_adv (‖r_adv‖ = eps per image) for ``decoder`` at ``z``:
    power iterations on KL(p(z) ‖ p(z + ξ d)) from a random d (CCT's get_r_adv).

    In float64 (a copy of the decoder's weights): in float32 the change of p that ξ = 1e-6 makes
    is below round-off, so the gradient's direction is noise (measured: cosine ~0 with the float64
    direction; 0.9999 at ξ = 1e-3). The gradient is taken with respect to d only, so the decoder's
    parameter gradients stay untouched."""
    dtype = torch.float64
    state = {name: t.detach().to(dtype) for name, t in (*decoder.named_parameters(), *decoder.named_buffers())}

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(decoder, state, (x,))

    with torch.autocast(z.device.type, enabled=False):
        x = z.detach().to(dtype)
        with torch.no_grad():
            target = F.softmax(run(x), dim=1)
        d = _l2_normalize(torch.rand(z.shape, device=z.device, dtype=z.dtype).to(dtype) - 0.5)
        for _ in range(iterations):
            d.requires_grad_(True)
            with torch.enable_grad():
                distance = F.kl_div(F.log_softmax(run(x + xi * d), dim=1), target, reduction="batchmean")
                (grad,) = torch.autograd.grad(distance, d)
            d = _l2_normalize(grad.detach())
    return (d * eps).to(z.dtype)


class AuxiliaryDecoder(nn.Module):
    """A decoder of the main decoder's architecture reading perturbed features."""

    def __init__(self, perturbation: str, decoder: nn.Module):
        super().__init__()
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"unknown CCT perturbation {perturbation!r}; choose from {', '.join(PERTURBATIONS)}")
        self.perturbation = perturbation
        self.decoder = decoder

    def perturb(self, z: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        kind = self.perturbation
        if kind == "vat":
            return z + vat_perturbation(z, self.decoder)
        if kind == "drop":
            return spatial_dropout(z)
        if kind == "cutout":
            return guided_cutout(z, foreground)
        if kind == "context_masking":
            return context_masking(z, foreground)
        if kind == "object_masking":
            return object_masking(z, foreground)
        if kind == "feature_drop":
            return feature_dropout(z)
        return feature_noise(z)

    def forward(self, z: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.perturb(z, foreground))


class _StageHead(nn.Module):
    """DeepLab-v2's head on a feature tensor (it reads a list of backbone stages)."""

    def __init__(self, head: DeepLabV2Head):
        super().__init__()
        self.head = head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head([z])


class CCTNet(nn.Module):
    """A `SegmentationNet` (``net``: what is saved and used at test time) with auxiliary decoders."""

    def __init__(self, net: SegmentationNet, decoders: Mapping[str, int]):
        super().__init__()
        self.net = net
        unknown = sorted(set(decoders) - set(PERTURBATIONS))
        if unknown:
            raise ValueError(f"unknown CCT perturbation(s) {unknown}; choose from {', '.join(PERTURBATIONS)}")
        if any(count < 0 for count in decoders.values()) or sum(decoders.values()) < 1:
            raise ValueError(f"CCT needs ≥ 1 auxiliary decoder and no negative count, not {dict(decoders)}")
        # In PERTURBATIONS' order (CCT's), whatever the mapping's: the init draws the same weights.
        self.aux_decoders = nn.ModuleList(AuxiliaryDecoder(name, self._new_decoder())
                                          for name in PERTURBATIONS for _ in range(decoders.get(name, 0)))

    def _new_decoder(self) -> nn.Module:
        head = self.net.head
        if self.net.head_name == "deeplabv2":
            return _StageHead(DeepLabV2Head(self.net.backbone.out_channels, self.net.num_labels, self.net.rates))
        return nn.Conv2d(head.classifier.in_channels, self.net.num_labels, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        stages = self.net.backbone.forward_stages(images)
        if self.net.head_name == "deeplabv2":
            return stages[-1]
        head = self.net.head
        low = head.reduce(stages[head.low_level_stage])
        high = F.interpolate(head.aspp(stages[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return head.decoder(torch.cat([high, low], dim=1))

    def main_decoder(self, z: torch.Tensor) -> torch.Tensor:
        if self.net.head_name == "deeplabv2":
            return self.net.head([z])
        return self.net.head.classifier(z)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The main path's logits at the input size (= ``net(images)``)."""
        return upsample(self.main_decoder(self.encode(images)), images.shape[-2:])

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head and auxiliary decoders' parameters)."""
        backbone, head = self.net.parameter_groups()
        return backbone, head + list(self.aux_decoders.parameters())


def upsample(logits: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
