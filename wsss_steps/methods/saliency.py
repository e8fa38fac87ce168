"""C²AM and C²AM-H class-agnostic saliency (docs/methods.md §4) and the pseudo-saliency masks made from it.

C²AM (unsupervised): a head on the backbone features F gives the foreground probability P; per
image, foreground and background representations v^f = Σ P·F and v^b = Σ (1−P)·F (any positive
normaliser, Σ P or H·W, leaves their cosine similarities unchanged); over a batch of n images the
loss pulls foregrounds together, backgrounds together, and pushes foreground from background:

    L = −1/(n(n−1)) Σ_{i≠j} w^f_ij log s^f_ij − 1/(n(n−1)) Σ_{i≠j} w^b_ij log s^b_ij
        − 1/n² Σ_{i,j} log(1 − s^neg_ij),          w_ij = exp(−α · rank_i(s_ij)),  α = 0.25,

with s the cosine similarities clamped to [0.0005, 0.9995] (reference code) and rank_i(s_ij) the
0-based rank of s_ij among row i's similarities to the other images (the most similar pair weighs
most, so outliers cannot pull the representation apart). The reference code (CCAM, P-NOC) sorts the
whole row, the diagonal included, subtracts 1 and averages over all n² entries: the same weights off
the diagonal, a diagonal at the clamp with zero gradient, and the mean over n² instead of n(n−1), so
its gradients are (n−1)/n of these. Nothing in the loss says which of P and 1−P is the object: the
polarity is fixed after training (`needs_polarity_flip`).

C²AM-H adds hints from seeds: ŷ = 1[max_c A_c ≥ δ_fg] (δ_fg 0.4, 0.3 on COCO), and λ_h · BCE(P, 1)
averaged over the hint pixels with label smoothing 0.1 (target 0.95), foreground hints only, λ_h 1.

Pseudo-saliency masks: the normalised map binarised at 0.2, refined by a 2-label dCRF (10
iterations, gt_prob 0.7, IRN's pairwise terms): the training targets of the refinement network.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wsss_steps.methods.crf import IRN_CRF, CrfSettings, crf_from_labels

RANK_ALPHA = 0.25
SIMILARITY_CLAMP = (0.0005, 0.9995)
HINT_THRESHOLD = 0.40
HINT_SMOOTHING = 0.1
HINT_WEIGHT = 1.0
PSEUDO_MASK_THRESHOLD = 0.2
POLARITY_THRESHOLD = 0.5


def pooled_representations(features: torch.Tensor, probability: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background representations (B, C) from features (B, C, h, w) and the
    foreground probability (B, 1, h, w): Σ P·F / (h·w) and Σ (1−P)·F / (h·w)."""
    if probability.shape[0] != features.shape[0] or probability.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"probability {tuple(probability.shape)} does not fit features {tuple(features.shape)}")
    area = features.shape[-2] * features.shape[-1]
    foreground = (features * probability).flatten(2).sum(-1) / area
    background = (features * (1.0 - probability)).flatten(2).sum(-1) / area
    return foreground, background


def cosine_similarities(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) cosine similarities of the rows of a (n, C) and b (m, C), clamped as the reference."""
    similarity = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
    return similarity.clamp(*SIMILARITY_CLAMP)


def rank_weights(similarity: torch.Tensor, alpha: float = RANK_ALPHA) -> torch.Tensor:
    """exp(−α · rank) for the off-diagonal entries of a square (n, n) similarity matrix, the rank
    0-based among each row's other entries in descending order (ties: the earlier column first);
    0 on the diagonal."""
    n = similarity.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=similarity.device)
    values = similarity.detach().masked_fill(~off, float("-inf"))  # the diagonal sorts last
    order = torch.argsort(values, dim=1, descending=True, stable=True)
    ranks = torch.argsort(order, dim=1, stable=True).to(similarity.dtype)
    return torch.exp(-alpha * ranks) * off


def similarity_max_loss(representations: torch.Tensor, alpha: float = RANK_ALPHA) -> torch.Tensor:
    """−1/(n(n−1)) Σ_{i≠j} w_ij log s_ij: pulls the n representations (n, C) together."""
    n = representations.shape[0]
    if n < 2:
        raise ValueError("the contrastive loss needs at least 2 images in a batch")
    similarity = cosine_similarities(representations, representations)
    return -(rank_weights(similarity, alpha) * torch.log(similarity)).sum() / (n * (n - 1))


def similarity_min_loss(background: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """−1/n² Σ_{i,j} log(1 − s(v^b_i, v^f_j)): pushes every background from every foreground."""
    return -torch.log(1.0 - cosine_similarities(background, foreground)).mean()


def contrastive_loss(features: torch.Tensor, probability: torch.Tensor, alpha: float = RANK_ALPHA
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """C²AM's loss of a batch (module docstring) and its three terms."""
    foreground, background = pooled_representations(features, probability)
    terms = {"fg_pull": similarity_max_loss(foreground, alpha),
             "push": similarity_min_loss(background, foreground),
             "bg_pull": similarity_max_loss(background, alpha)}
    return sum(terms.values()), {name: float(value.detach()) for name, value in terms.items()}


def hint_mask(seed_maps: np.ndarray, threshold: float = HINT_THRESHOLD) -> np.ndarray:
    """C²AM-H's foreground hints (H, W) uint8: 1 where the highest seed (K, H, W) is ≥ δ_fg."""
    seed_maps = np.asarray(seed_maps, dtype=np.float32)
    if seed_maps.ndim != 3:
        raise ValueError(f"seed maps must be (K, H, W), not {seed_maps.shape}")
    if seed_maps.shape[0] == 0:
        return np.zeros(seed_maps.shape[1:], dtype=np.uint8)
    return (seed_maps.max(axis=0) >= threshold).astype(np.uint8)


def hint_loss(logits: torch.Tensor, hints: torch.Tensor, smoothing: float = HINT_SMOOTHING) -> torch.Tensor:
    """BCE of the foreground logits (B, 1, h, w) towards 1 (smoothed to 1 − ε/2) at the pixels
    where ``hints`` (B, h, w) is 1, averaged over them; 0 (with a gradient path) without any."""
    selected = hints.unsqueeze(1) == 1
    if not bool(selected.any()):
        return logits.sum() * 0.0
    target = torch.full_like(logits, 1.0 - 0.5 * smoothing)
    return F.binary_cross_entropy_with_logits(logits[selected], target[selected])


def border_foreground_fraction(probability: np.ndarray | torch.Tensor) -> float:
    """The reference code's polarity check of one map (h, w): the map binarised at 0.5, the mean
    of its top row, left column, bottom row and right column, averaged."""
    binary = (torch.as_tensor(probability, dtype=torch.float32) > POLARITY_THRESHOLD).float()
    if binary.ndim != 2:
        raise ValueError(f"a polarity check takes one (h, w) map, not {tuple(binary.shape)}")
    edges = (binary[0, :].mean() + binary[:, 0].mean() + binary[-1, :].mean() + binary[:, -1].mean()) / 4
    return float(edges)


def needs_polarity_flip(border_fractions: np.ndarray | list[float]) -> bool:
    """True when the maps call the image border mostly foreground (mean fraction > 0.5): the
    network learnt the background as P, and 1 − P is the saliency."""
    fractions = np.asarray(border_fractions, dtype=np.float64)
    if fractions.size == 0:
        raise ValueError("the polarity check needs at least one map")
    return bool(fractions.mean() > POLARITY_THRESHOLD)


def pseudo_saliency_mask(image: np.ndarray, saliency: np.ndarray, threshold: float = PSEUDO_MASK_THRESHOLD,
                         crf: CrfSettings | None = IRN_CRF) -> np.ndarray:
    """The binary pseudo-saliency mask (H, W) uint8: saliency > ``threshold``, refined by a
    2-label dCRF on the RGB image (none with ``crf`` None)."""
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != image.shape[:2]:
        raise ValueError(f"saliency map is {saliency.shape}, the image is {image.shape[:2]}")
    labels = (saliency > threshold).astype(np.int64)
    if crf is not None:
        labels = crf_from_labels(image, labels, 2, crf)
    return labels.astype(np.uint8)
