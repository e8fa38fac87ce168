"""The tensor operations of the classifier variants (docs/methods.md §3): Puzzle-CAM's tiles and their
merge, OC-CSE's choice of one positive class and its soft erasure, P-NOC's hard erasure, and label
smoothing. Pure functions of tensors; the losses that use them are `wsss_steps.training.variants`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PUZZLE_GRID = 2  # Puzzle-CAM's 4 pieces: a 2 × 2 grid


def tile_images(images: torch.Tensor, grid: int = PUZZLE_GRID) -> torch.Tensor:
    """(B, C, H, W) → (grid² · B, C, H/grid, W/grid): tile (i, j) of image b at index
    (i · grid + j) · B + b (tile-major, as Puzzle-CAM's `tile_features`). H and W must divide."""
    batch, channels, height, width = images.shape
    if height % grid or width % grid:
        raise ValueError(f"puzzle tiles: {height}×{width} does not split into a {grid}×{grid} grid")
    tiles = images.reshape(batch, channels, grid, height // grid, grid, width // grid)
    return tiles.permute(2, 4, 0, 1, 3, 5).reshape(grid * grid * batch, channels, height // grid, width // grid)


def merge_tiles(tiles: torch.Tensor, batch: int, grid: int = PUZZLE_GRID) -> torch.Tensor:
    """The inverse of `tile_images`: each tile's map put back in its place, (B, C, grid · h, grid · w)."""
    _, channels, height, width = tiles.shape
    merged = tiles.reshape(grid, grid, batch, channels, height, width)
    return merged.permute(2, 3, 0, 4, 1, 5).reshape(batch, channels, grid * height, grid * width)


def choose_positive_class(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One positive class per image, uniformly at random (OC-CSE's r): a one-hot (B, C) float
    tensor on ``labels``' device; an image without any positive label gets an all-zero row."""
    positive = labels.detach().float().cpu() > 0
    has_positive = positive.any(dim=1)
    weights = torch.where(has_positive[:, None], positive.float(), torch.ones_like(positive, dtype=torch.float))
    chosen = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    one_hot = F.one_hot(chosen, labels.shape[1]).float() * has_positive[:, None].float()
    return one_hot.to(labels.device)


def chosen_class_map(cams: torch.Tensor, chosen: torch.Tensor, size: tuple[int, int],
                     relu_first: bool = False) -> torch.Tensor:
    """The chosen class's CAM (``chosen`` one-hot (B, C)) bilinearly resized to ``size`` and
    ReLU'd, (B, 1, H, W); ``relu_first``: ReLU, then resize (P-NOC's hard mask; OC-CSE resizes first)."""
    selected = (cams * chosen[:, :, None, None]).sum(dim=1, keepdim=True)
    if relu_first:
        return F.interpolate(F.relu(selected), size=size, mode="bilinear", align_corners=False)
    return F.relu(F.interpolate(selected, size=size, mode="bilinear", align_corners=False))


def soft_erasure_map(cams: torch.Tensor, chosen: torch.Tensor, size: tuple[int, int],
                     normalisation: str = "batch") -> torch.Tensor:
    """OC-CSE's ψ(A_r) in [0, 1], (B, 1, H, W), differentiable in ``cams``. ``batch``: divided by
    the largest value over the whole batch (OC-CSE's and P-NOC's code); ``image``: by each image's
    own maximum."""
    resized = chosen_class_map(cams, chosen, size)
    if normalisation == "batch":
        peak = resized.max()
    elif normalisation == "image":
        peak = F.adaptive_max_pool2d(resized, 1)
    else:
        raise ValueError(f"erasure normalisation must be 'batch' or 'image', not {normalisation!r}")
    return resized / (peak + 1e-5)


def hard_erasure_mask(cams: torch.Tensor, chosen: torch.Tensor, size: tuple[int, int], delta: float,
                      rule: str = "reference_code") -> torch.Tensor:
    """P-NOC's erased region, (B, 1, H, W) in {0, 1}, on the per-image max-normalised ψ(A_r).
    ``reference_code``: ψ > δ (P-NOC's code: everything above δ_noc = 0.2 is erased);
    ``methods_formula``: the complement of 1[1 − ψ > δ] as docs/methods.md §3 writes it (only ψ ≥ 1 − δ)."""
    with torch.no_grad():
        resized = chosen_class_map(cams, chosen, size, relu_first=True)
        normalised = resized / (F.adaptive_max_pool2d(resized, 1) + 1e-5)
        if rule == "reference_code":
            return (normalised > delta).float()
        if rule == "methods_formula":
            return (1.0 - normalised <= delta).float()
    raise ValueError(f"noc mask rule must be 'reference_code' or 'methods_formula', not {rule!r}")


def smooth_labels(labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Label smoothing of multi-label targets, each label a two-way target: y (1 − ε) + ε / 2."""
    return labels * (1.0 - epsilon) + 0.5 * epsilon if epsilon else labels
