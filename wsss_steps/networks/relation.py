"""IRN's inter-pixel relation (class boundary) branch and the affinities it defines (docs/methods.md §5).

The network reads frozen backbone features from several stages; each goes through a 1×1 conv and
GroupNorm, is resized to stride 4 and ReLU'd (IRN's order: conv, GN, upsample, ReLU), and a last
1×1 conv of their concatenation gives the boundary logits. ``B = sigmoid(logits)``.

The affinity of pixels i and j (j within ``radius`` of i) is ``a_ij = 1 − max_{k on segment i–j} B_k``.
Pairs follow IRN's ``PathIndex``: the search directions are a half plane, (0, dx) with
0 < dx < r and (dy, dx) with 0 < dy < r, |dx| < r, dy² + dx² < r² (radius 5: 34 directions,
radius 10: 152), each pair counted once; the segment's pixels are those of the bounding box of
(0, 0) and (dy, dx) whose distance to the line through them is below 1 (both ends included).
Path offsets are computed once per radius (`path_index`); for a map size the flat gather indices
are cached on that object, so an affinity map is a few gathers and a max.

Differences from IRN that do not change the method: stages are resized to exactly ⌈H/4⌉ × ⌈W/4⌉
(IRN upsamples by a fixed factor and crops), so any backbone of this project with any stage
strides fits; affinities are returned for every source pixel on a (B, D, h, w) grid with pairs
whose far end leaves the map marked invalid (IRN crops a margin instead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss_steps.data.images import IGNORE_LABEL
from wsss_steps.networks.backbones import Backbone, build_backbone
from wsss_steps.networks.io import atomic_torch_save

FORMAT = "wsss_relation/1"
FLAT_CACHE_SIZE = 8
LOG_EPS = 1e-5  # IRN's loss: −log(a + 1e-5), −log(1 + 1e-5 − a), sums / (count + 1e-5)


# ---------------------------------------------------------------------------------------------
# Pair geometry


def search_directions(radius: int) -> np.ndarray:
    """IRN's search directions (D, 2) as (dy, dx): a half plane of offsets with dy² + dx² < r²."""
    if radius < 2:
        raise ValueError(f"radius must be >= 2, not {radius}")
    directions = [(0, dx) for dx in range(1, radius)]
    directions += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
                   if dy * dy + dx * dx < radius * radius]
    return np.asarray(directions, dtype=np.int64)


def direction_path(dy: int, dx: int) -> np.ndarray:
    """Pixels (L, 2) of the segment from (0, 0) to (dy, dx), far end first (IRN's ordering)."""
    length_sq = dy * dy + dx * dx
    ys = range(min(0, dy), max(0, dy) + 1)
    xs = range(min(0, dx), max(0, dx) + 1)
    coords = [(y, x) for y in ys for x in xs if (dy * x - dx * y) ** 2 / length_sq < 1]
    coords.sort(key=lambda c: -abs(c[0]) - abs(c[1]))
    return np.asarray(coords, dtype=np.int64)


@dataclass
class PathIndex:
    """Directions and segment offsets of one radius, grouped by segment length for gathering."""

    radius: int
    directions: np.ndarray  # (D, 2)
    groups: list[tuple[np.ndarray, np.ndarray]]  # (direction indices (G,), offsets (G, L, 2))
    _flat: dict[tuple[int, int, str], tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = \
        field(default_factory=dict, repr=False)

    @property
    def num_directions(self) -> int:
        return len(self.directions)

    def padded_width(self, width: int) -> int:
        return width + 2 * self.radius

    def pad(self, maps: torch.Tensor, value: float) -> torch.Tensor:
        """Pads (B, h, w) maps on the left, right and bottom (directions point down or right)."""
        r = self.radius
        return F.pad(maps, (r, r, 0, r), value=value)

    def flat_indices(self, height: int, width: int, device: torch.device | str
                     ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Per group the gather indices (G, L, N) into a padded, flattened map; the direction order
        of the concatenated groups; and the indices (D, N) of every pair's far end."""
        key = (height, width, str(device))
        if key not in self._flat:
            if len(self._flat) >= FLAT_CACHE_SIZE:  # image sizes vary: keep the latest few
                self._flat.pop(next(iter(self._flat)))
            wp = self.padded_width(width)
            ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
            base = torch.as_tensor((ys * wp + xs + self.radius).reshape(-1), device=device)
            gathers, order = [], []
            for direction_ids, offsets in self.groups:
                flat_offsets = torch.as_tensor(offsets[..., 0] * wp + offsets[..., 1], device=device)
                gathers.append(base[None, None, :] + flat_offsets[:, :, None])
                order.append(direction_ids)
            order_tensor = torch.as_tensor(np.argsort(np.concatenate(order)), device=device)
            far = torch.as_tensor(self.directions[:, 0] * wp + self.directions[:, 1], device=device)
            self._flat[key] = (gathers, order_tensor, base[None, :] + far[:, None])
        return self._flat[key]


@lru_cache(maxsize=8)
def path_index(radius: int) -> PathIndex:
    """The (cached) `PathIndex` of a radius."""
    directions = search_directions(radius)
    paths = [direction_path(int(dy), int(dx)) for dy, dx in directions]
    by_length: dict[int, list[int]] = {}
    for i, path in enumerate(paths):
        by_length.setdefault(len(path), []).append(i)
    groups = [(np.asarray(ids), np.stack([paths[i] for i in ids])) for _, ids in sorted(by_length.items())]
    return PathIndex(radius, directions, groups)


def destination_valid(height: int, width: int, index: PathIndex,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """(D, h, w) bool: the far end of the pair (pixel + direction) lies inside the map."""
    ys = torch.arange(height, device=device)[None, :, None]
    xs = torch.arange(width, device=device)[None, None, :]
    d = torch.as_tensor(index.directions, device=device)
    dy, dx = d[:, 0, None, None], d[:, 1, None, None]
    return (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)


def boundary_to_affinity(boundary: torch.Tensor, index: PathIndex) -> torch.Tensor:
    """Affinities (B, D, h, w) from boundary maps (B, h, w): 1 − max of B on each pair's segment.

    Pairs whose far end leaves the map get 0 (the padding is 1, as IRN's); mask them with
    `destination_valid`. Differentiable in ``boundary``.
    """
    if boundary.ndim != 3:
        raise ValueError(f"boundary must be (B, h, w), not {tuple(boundary.shape)}")
    batch, height, width = boundary.shape
    flat = index.pad(boundary, 1.0).reshape(batch, -1)
    gathers, order, _ = index.flat_indices(height, width, boundary.device)
    maxima = [flat[:, g].amax(dim=2) for g in gathers]  # each (B, G, N)
    result = 1.0 - torch.cat(maxima, dim=1)[:, order]
    return result.reshape(batch, index.num_directions, height, width)


def pair_labels(labels: torch.Tensor, index: PathIndex) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair targets (B, D, h, w) bool from label maps (B, h, w) (0 = bg, 1.. = class, 255 = ignore).

    Returns (bg_pos, fg_pos, neg): same label and background; same label and a class; different
    labels. Pairs touching 255 or leaving the map are in none of them (docs/methods.md §5).
    """
    batch, height, width = labels.shape
    labels = labels.long()
    flat = index.pad(labels, IGNORE_LABEL).reshape(batch, -1)
    _, _, far = index.flat_indices(height, width, labels.device)
    source = labels.reshape(batch, 1, -1)
    target = flat[:, far]  # (B, D, N)
    valid = (source != IGNORE_LABEL) & (target != IGNORE_LABEL)
    equal = source == target
    shape = (batch, index.num_directions, height, width)
    bg_pos = (valid & equal & (source == 0)).reshape(shape)
    fg_pos = (valid & equal & (source > 0)).reshape(shape)
    neg = (valid & ~equal).reshape(shape)
    return bg_pos, fg_pos, neg


def affinity_loss(affinity: torch.Tensor, labels: torch.Tensor, index: PathIndex
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """IRN's affinity loss: (bg_pos/2 + fg_pos/2 + neg) / 2, each term a mean over its pairs of
    −log a (positives) or −log(1 − a) (negatives). Returns the loss and its parts (floats)."""
    bg_pos, fg_pos, neg = pair_labels(labels, index)

    def mean(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        mask = mask.to(values.dtype)
        return (mask * values).sum() / (mask.sum() + LOG_EPS)

    pos_log = -torch.log(affinity + LOG_EPS)
    bg_loss = mean(bg_pos, pos_log)
    fg_loss = mean(fg_pos, pos_log)
    neg_loss = mean(neg, -torch.log(1.0 + LOG_EPS - affinity))
    loss = (bg_loss / 2 + fg_loss / 2 + neg_loss) / 2
    parts = {"bg_pos": float(bg_loss.detach()), "fg_pos": float(fg_loss.detach()),
             "neg": float(neg_loss.detach()), "bg_pairs": int(bg_pos.sum()),
             "fg_pairs": int(fg_pos.sum()), "neg_pairs": int(neg.sum())}
    return loss, parts


# ---------------------------------------------------------------------------------------------
# Network


def stride4_size(height: int, width: int) -> tuple[int, int]:
    return math.ceil(height / 4), math.ceil(width / 4)


class RelationNet(nn.Module):
    """Frozen backbone + IRN's boundary branch. ``forward`` gives boundary logits (B, 1, h4, w4)."""

    def __init__(self, backbone: Backbone, stages: Sequence[int] | None = None, width: int = 32,
                 groups: int = 4):
        super().__init__()
        num_stages = len(backbone.stage_channels)
        self.stages = tuple(range(num_stages)) if stages is None else tuple(int(s) for s in stages)
        if not self.stages or any(not 0 <= s < num_stages for s in self.stages) \
                or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages must be distinct indices in 0..{num_stages - 1}, not {stages}")
        if width % groups:
            raise ValueError(f"width {width} is not a multiple of the GroupNorm groups {groups}")
        self.width = width
        self.groups = groups
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(backbone.stage_channels[s], width, 1, bias=False),
                          nn.GroupNorm(groups, width))
            for s in self.stages)
        self.head = nn.Conv2d(width * len(self.stages), 1, 1, bias=True)

    def train(self, mode: bool = True) -> RelationNet:
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics stay those of the classifier
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.branches.parameters(), *self.head.parameters()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = stride4_size(*images.shape[-2:])
        with torch.no_grad():
            features = self.backbone.forward_stages(images)
        outputs = []
        for stage, branch in zip(self.stages, self.branches, strict=True):
            x = branch(features[stage].detach())
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            outputs.append(F.relu(x))
        return self.head(torch.cat(outputs, dim=1))


@torch.no_grad()
def boundary_map(model: RelationNet, image: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """Boundary map (h4, w4) of one normalised image (1, 3, H, W): IRN's EdgeDisplacement,
    sigmoid of the mean of the logits of the image and its (un-)flipped mirror."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, 3, H, W), not {tuple(image.shape)}")
    batch = torch.cat([image, image.flip(-1)]) if flip else image
    logits = model(batch)[:, 0]
    mean = logits[0] / 2 + logits[1].flip(-1) / 2 if flip else logits[0]
    return torch.sigmoid(mean)


def save_relation(path: str | Path, model: RelationNet, meta: Mapping[str, Any]) -> None:
    """Writes the whole model (backbone included, so the file stands alone) and its metadata."""
    meta = dict(meta)
    meta.update(backbone=model.backbone.name, output_stride=model.backbone.output_stride,
                stages=list(model.stages), width=model.width, groups=model.groups)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "meta": meta, "state_dict": state}, path)


def load_relation(path: str | Path, device: torch.device | str = "cpu") -> tuple[RelationNet, dict[str, Any]]:
    """The relation network stored in ``path`` on ``device``, in eval mode, and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"relation network file not found: {path}")
    content = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path} is not a relation network file of format {FORMAT} (found {found!r})")
    meta = content["meta"]
    backbone = build_backbone(meta["backbone"], None, int(meta["output_stride"]), pretrained=False)
    model = RelationNet(backbone, meta["stages"], int(meta["width"]), int(meta["groups"]))
    try:
        model.load_state_dict(content["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"relation network file {path} does not fit its own metadata: {error}") from error
    return model.to(device).eval(), meta
