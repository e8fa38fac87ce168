"""The weight-map method (docs/methods.md §8, method I: Shaharabany & Wolf): its loss, its box and the
early-stopping score S that chooses the generator's epoch.

- Loss: CE(f(I), f(I ⊙ g(I))) + λ‖g(I)‖₁ with f frozen: the cross-entropy of f's class
  distribution on the masked image against its distribution on the clean one (f's own soft
  prediction: no label is read), plus λ times the mean weight (the L1 norm per pixel, so λ = 1 keeps
  its meaning at any image size). The image is masked in the network's normalised input space, so a
  weight of 0 turns a pixel into the ImageNet mean colour (what a zero means to f).
- Box: weights below max/10 set to zero, the bounding box of the largest remaining contour.
- S (per image): the mass of the thresholded map inside that box over its total mass; the epoch
  kept is the one with the highest mean S over the validation images (the first of equals). S reads
  no annotation.

Method II (`weight_map_triplet_loss`): f is an embedding trained with a triplet loss (margin 1) on
anchor / positive (same class) / negative (other class) images; g is trained with
L_inner + L_outer + λR: L_inner keeps f of each image close to f of its weighted foreground g ⊙ I
and far from f of its background (1 − g) ⊙ I (a triplet term per image of the triplet), L_outer
keeps the foregrounds of the anchor and the positive close and the negative's far, R is the mean
weight as in method I.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss_steps.methods.boxes import binarize, boxes_from_map, normalize_map

BOX_FRACTION = 0.1  # weights below max/10 are zeroed before the box (docs/methods.md §8)


def weight_map_loss(classifier: nn.Module, generator: nn.Module, images: torch.Tensor, l1_weight: float = 1.0
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a batch and its parts (``ce``, ``l1``)."""
    with torch.no_grad():
        target = F.softmax(classifier(images), dim=1)
    weights = generator(images)
    log_probs = F.log_softmax(classifier(images * weights), dim=1)
    ce = -(target * log_probs).sum(dim=1).mean()
    l1 = weights.abs().mean()
    return ce + l1_weight * l1, {"ce": ce.item(), "l1": l1.item()}


TRIPLET_MARGIN = 1.0  # docs/methods.md §8, method II


def weight_map_triplet_loss(embedding: nn.Module, generator: nn.Module, anchors: torch.Tensor,
                            positives: torch.Tensor, negatives: torch.Tensor, reg_weight: float = 1.0,
                            margin: float = TRIPLET_MARGIN) -> tuple[torch.Tensor, dict[str, float]]:
    """Method II's loss of a batch of triplets (each (B, 3, H, W), normalised) and its parts
    (``inner``, ``outer``, ``reg``); f (``embedding``) frozen by the caller."""
    images = torch.cat([anchors, positives, negatives])
    weights = generator(images)
    with torch.no_grad():
        clean = embedding(images)
    foreground = embedding(images * weights)
    background = embedding(images * (1.0 - weights))
    inner = F.triplet_margin_loss(clean, foreground, background, margin=margin)
    fg_anchor, fg_positive, fg_negative = foreground.chunk(3)
    outer = F.triplet_margin_loss(fg_anchor, fg_positive, fg_negative, margin=margin)
    reg = weights.abs().mean()
    loss = inner + outer + reg_weight * reg
    return loss, {"inner": inner.item(), "outer": outer.item(), "reg": reg.item()}


def weight_map_box(weight_map: np.ndarray, fraction: float = BOX_FRACTION) -> np.ndarray:
    """The box (x_min, y_min, x_max, y_max, inclusive) of a weight map: the largest contour of the
    map where it exceeds ``fraction`` × its maximum; (0, 0, 0, 0) for a map without a positive value."""
    return boxes_from_map(normalize_map(weight_map), [fraction])[0][0]


def box_mass_score(weight_map: np.ndarray, fraction: float = BOX_FRACTION) -> float:
    """S of one map: its mass above ``fraction`` × max inside its box / that mass (0 for an all-zero map)."""
    normalized = normalize_map(weight_map)
    kept = np.where(binarize(normalized, fraction) > 0, normalized, 0.0)
    total = float(kept.sum())
    if total <= 0:
        return 0.0
    x_min, y_min, x_max, y_max = boxes_from_map(normalized, [fraction])[0][0]
    return float(kept[y_min:y_max + 1, x_min:x_max + 1].sum()) / total


def early_stopping_epoch(mean_scores: Sequence[float]) -> int:
    """The 1-based epoch of the highest mean S (the first of equals; NaN never wins)."""
    scores = np.asarray(mean_scores, dtype=np.float64)
    if scores.size == 0 or not np.isfinite(scores).any():
        raise ValueError("no finite early-stopping score to choose an epoch from")
    return int(np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf))) + 1


@torch.no_grad()
def predict_weight_map(generator: nn.Module, image: torch.Tensor) -> np.ndarray:
    """The map (H, W) of one normalised image (3, H, W); the generator in eval mode."""
    return generator(image[None])[0, 0].float().cpu().numpy()
