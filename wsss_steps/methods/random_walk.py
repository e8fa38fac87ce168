"""IRN's random walk from the relation network's boundary map, computed exactly without the dense
transition matrix (docs/methods.md §5).

What IRN computes (``misc/indexing.py`` ``propagate_to_edge`` and ``step/make_sem_seg_labels.py``),
on the stride-4 grid of N = h·w pixels:

- affinities a_ij = 1 − max of B on the segment i–j for the pairs within ``radius`` 5 (the
  half-plane directions of `wsss_steps.networks.relation.search_directions`); A = I + S + Sᵀ with
  S the pair affinities: symmetric, 1 on the diagonal, 0 beyond the radius;
- A^β element-wise (β = 10), then ``A / A.sum(dim=0)``: each column sums to 1, T = A^β D⁻¹;
- T is squared ``exp_times`` (8) times: T^(2^8) = T^256, a dense N × N matrix;
- the seeds ``cam_stride4`` (K, h, w) (AdvCAM first raises them to the power 1.5) are multiplied by
  (1 − B), and the row vectors x (K, N) are propagated: rw = x · T^256;
- rw is upsampled ×4 (bilinear, align_corners=False), cropped to the image, divided by its max
  over all classes and pixels (one global max, not one per class), padded with a background
  score ``sem_seg_bg_thres`` (0.25) as channel 0 **after** the walk, and argmaxed; the argmax
  indexes ``[0, keys + 1]``.

Since A is symmetric, x · (A^β D⁻¹)^n = ((D⁻¹ A^β)^n xᵀ)ᵀ: the walk applies the row-stochastic
matrix P = D⁻¹ A^β (each pixel's new score is the A^β-weighted mean of its neighbours' scores) to
the K score columns n = 2^exp_times times. P has at most 69 non-zeros per row at radius 5 (the
pixel, 34 directions and their mirrors), so 256 sparse products (torch CSR) give T^256's result
in O(256 · 69 · N · K) operations and O(69 · N) memory, instead of the dense version's
8 · 2N³ operations and N² memory (0.55 GB in float32 for a 500 × 375 image, N = 11,750).
`dense_random_walk` is that dense reference, kept for tests and the benchmark.

Background padding. The issue text says IRN pads the background before the walk; IRN's code
(and AdvCAM's and P-NOC's copies, and docs/methods.md §5's wording) pads it afterwards, on the normalised,
upsampled scores; that is what is done here. The walk therefore moves the K class channels only,
and the stored ``cam`` maps (K, H, W) (scores / global max) can be swept over background
thresholds by `wsss_steps.evaluation.masks` as seeds are.

Step output per image: ``cam`` (K, H, W) float16 (propagated scores / global max), ``keys``,
``pseudo_label`` (H, W) uint8 at ``--sem-seg-bg-thres`` (mask numbering), ``boundary`` (h, w)
float16 (the relation network's B, for inspection). ``--boundary ground-truth`` (no
``--relation``) walks on a boundary drawn from the ground-truth masks instead: the ceiling a perfect
relation network would reach from the same seeds (docs/results.md, "Pseudo masks on the earlier default data"); a diagnostic only.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from wsss_steps.data.images import IGNORE_LABEL
from wsss_steps.networks.relation import (
    PathIndex,
    boundary_to_affinity,
    destination_valid,
    path_index,
)

log = logging.getLogger("wsss_steps.random_walk")

STAGE = "random_walk"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _pairs(boundary: torch.Tensor, index: PathIndex) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sources, destinations, affinities) of the in-map pairs of a boundary map (h, w)."""
    height, width = boundary.shape
    affinity = boundary_to_affinity(boundary[None], index)[0]  # (D, h, w)
    valid = destination_valid(height, width, index, boundary.device)
    source = torch.arange(height * width, device=boundary.device).view(1, height, width)
    d = torch.as_tensor(index.directions, device=boundary.device)
    destination = source + (d[:, 0] * width + d[:, 1]).view(-1, 1, 1)
    source = source.expand_as(destination)
    return source[valid], destination[valid], affinity[valid]


def transition_matrix(boundary: torch.Tensor, radius: int = 5, beta: float = 10.0) -> torch.Tensor:
    """P = D⁻¹ A^β as a sparse CSR matrix (N, N) of a boundary map (h, w); rows sum to 1."""
    if boundary.ndim != 2:
        raise ValueError(f"boundary must be (h, w), not {tuple(boundary.shape)}")
    count = boundary.numel()
    source, destination, affinity = _pairs(boundary, path_index(radius))
    diagonal = torch.arange(count, device=boundary.device)
    weights = affinity.clamp_min(0) ** beta
    rows = torch.cat([source, destination, diagonal])
    cols = torch.cat([destination, source, diagonal])
    values = torch.cat([weights, weights, torch.ones(count, dtype=boundary.dtype, device=boundary.device)])
    degree = torch.zeros(count, dtype=boundary.dtype, device=boundary.device).index_add_(0, rows, values)
    matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), values / degree[rows], (count, count),
                                     check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return matrix.coalesce().to_sparse_csr()


def random_walk(seeds: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
                exp_times: int = 8) -> torch.Tensor:
    """IRN's propagation of seeds (K, h, w) on a boundary map (h, w): (K, h, w), never dense.

    Equals ``dense_random_walk`` (module docstring); computes in the dtype of ``boundary``.
    """
    if seeds.ndim != 3 or seeds.shape[1:] != boundary.shape:
        raise ValueError(f"seeds {tuple(seeds.shape)} must be (K, h, w) on the boundary's grid {tuple(boundary.shape)}")
    num_maps, height, width = seeds.shape
    if num_maps == 0:
        return seeds.to(boundary.dtype)
    matrix = transition_matrix(boundary, radius, beta)
    scores = (seeds.to(boundary.dtype) * (1 - boundary)).reshape(num_maps, -1).T.contiguous()
    for _ in range(2 ** exp_times):
        scores = matrix @ scores
    return scores.T.reshape(num_maps, height, width)


def dense_random_walk(seeds: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
                      exp_times: int = 8) -> torch.Tensor:
    """The reference: IRN's dense computation (N × N transition matrix squared ``exp_times`` times).

    Memory N² and time O(exp_times · N³): for tests and benchmarks on small maps only.
    """
    num_maps, height, width = seeds.shape
    count = height * width
    source, destination, affinity = _pairs(boundary, path_index(radius))
    dense = torch.eye(count, dtype=boundary.dtype, device=boundary.device)
    dense[source, destination] = affinity
    dense[destination, source] = affinity
    dense = dense ** beta
    transition = dense / dense.sum(dim=0, keepdim=True)
    del dense
    for _ in range(exp_times):
        transition = transition @ transition
    x = (seeds.to(boundary.dtype) * (1 - boundary)).reshape(num_maps, count)
    return (x @ transition).reshape(num_maps, height, width)


def ground_truth_boundary(mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """A perfect boundary map (h, w) from a ground-truth mask (H, W): 1 in every stride-4 cell
    holding a void pixel (255: VOC's band along instance outlines) or a change of label, else 0.

    Diagnostic only (``--boundary ground-truth``): the walk from the seeds on it is the ceiling a
    perfect relation network could reach with those seeds, which separates the seeds' errors from
    the boundary map's.
    """
    labels = torch.as_tensor(np.asarray(mask, dtype=np.int64))
    edge = labels == IGNORE_LABEL
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    height, width = grid
    padded = F.pad(edge[None, None].float(), (0, 4 * width - edge.shape[1], 0, 4 * height - edge.shape[0]))
    return F.max_pool2d(padded, 4)[0, 0]


def upsample_normalize(scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Stride-4 scores (K, h, w) → ×4 bilinear, cropped to (K, H, W), divided by the global max."""
    if scores.shape[0] == 0:
        return scores.new_zeros((0, height, width))
    up = F.interpolate(scores[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :height, :width]
    peak = up.max()
    return up / peak if peak > 0 else up




def propagate_seeds(seeds_stride4: np.ndarray, boundary: torch.Tensor, height: int, width: int,
                    radius: int = 5, beta: float = 10.0, exp_times: int = 8, power: float = 1.0,
                    dtype: torch.dtype = torch.float64) -> np.ndarray:
    """The whole walk of one image: seeds^power, walk, ×4, crop, / max → float32 (K, H, W)."""
    seeds = torch.as_tensor(np.asarray(seeds_stride4, dtype=np.float64), device=boundary.device)
    seeds = seeds.clamp_min(0) ** power
    scores = random_walk(seeds.to(dtype), boundary.to(dtype), radius, beta, exp_times)
    return upsample_normalize(scores, height, width).float().cpu().numpy()
