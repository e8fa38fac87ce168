"""Generates the project's embedded default dataset: synthetic multi-label scenes in the VOC layout.

`generate_dataset` writes what `VocLayoutDataset` reads:
``JPEGImages/{id}.jpg``, ``SegmentationClass/{id}.png`` (VOC palette, 0 = background, k = line k
of ``classes.txt``, 255 = void), ``ImageSets/Segmentation/{train,val}.txt``, ``classes.txt``,
``labels.csv``, ``boxes.csv`` (one row per object instance) and ``dataset.json`` (settings and
statistics). Same settings give byte-identical files; every image has its own random generator
seeded from (seed, split, index), so no image depends on another.

The scenes are built to show the problem WSSS methods address, not to be easy:
- every object has a small, saturated, class-specific *part* (6-10 % of its area by default) that
  alone identifies its class, and a larger *body* whose shape and texture are class-specific but
  whose colours and textures are shared with other classes and with the background clutter. A
  classifier gets most of its evidence from the part, so CAMs sit on the part and miss the body
  (as VOC CAMs sit on faces and wheels); closing that gap is what the seed methods are for;
- ``chair`` and ``table`` appear together in most images holding either, standing side by side,
  a context bias (like boat and water) that makes the CAM of one leak onto the other;
- textured, cluttered backgrounds (noise, gradients, blobs, stripes, sticks, and now and then a
  faded part-less copy of a class body) in body colours, so "not background" is no shortcut;
- objects are large, as in VOC (half size 0.24-0.40 of the image side; about a quarter of the
  pixels are foreground, VOC's share): with smaller objects a stride-8 CAM blob was as large as
  the object, and the seeds' errors were blur rather than missed bodies;
- half the objects (``part_prob`` 0.5) hide their part, and then only their body (shape and a
  class-specific texture of contrast ``texture_strength`` 0.3, in shared colours) tells the class:
  the classifier has to learn bodies too, so its CAMs' precision and recall come near those on
  real photos (MSRC-v2, `diagnostics/evidence_profile.py`; docs/datasets.md, "The default generated dataset");
- objects are scaled, rotated, mirrored, overlap (later ones occlude earlier ones; masks and boxes
  follow what is visible) and may be cut by the image border; masks carry a ~2 px void band along
  every instance boundary, as VOC masks do.
"""
from __future__ import annotations

import colorsys
import csv
import dataclasses
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsss_steps.data.images import IGNORE_LABEL, write_image, write_label_mask
from wsss_steps.data.manifest import validate_image_id

GENERATOR_NAME = "wsss_steps.generate_dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
COOCCURRING_PAIR = ("chair", "table")
# What the generator writes; a non-empty output folder holding anything else is not ours to replace.
_OUTPUT_ENTRIES = frozenset({
    "JPEGImages", "SegmentationClass", "ImageSets", "classes.txt", "labels.csv", "boxes.csv",
    "dataset.json",
    ".snakemake_timestamp",  # Snakemake's mark on a directory() output (the workflow's generate rule)
})


class GeneratorError(ValueError):
    """Bad generator settings or an output folder the generator may not write into."""


@dataclass(frozen=True)
class GeneratorSettings:
    """Everything the generated dataset depends on (all of it is recorded in dataset.json)."""

    num_train: int = 320
    num_val: int = 96
    image_size: int = 128
    num_classes: int = 6
    min_objects: int = 1
    max_objects: int = 3
    seed: int = 0
    single_object: bool = False
    pair_prob: float = 0.7
    duplicate_prob: float = 0.1
    part_fraction_min: float = 0.06
    part_fraction_max: float = 0.10
    part_prob: float = 0.5
    object_scale_min: float = 0.24
    object_scale_max: float = 0.40
    min_visible: float = 0.6
    clutter_min: int = 4
    clutter_max: int = 9
    decoy_prob: float = 0.25
    texture_strength: float = 0.3
    color_jitter: float = 0.06
    noise_std: float = 2.5
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        problems = []
        if self.num_train < 1 or self.num_val < 1:
            problems.append("num_train and num_val must be at least 1")
        if not 32 <= self.image_size <= 2048:
            problems.append("image_size must be in 32..2048")
        if not 1 <= self.num_classes <= len(CLASS_SPECS):
            problems.append(f"num_classes must be in 1..{len(CLASS_SPECS)}")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            problems.append("need 1 <= min_objects <= max_objects <= 6")
        if self.seed < 0:
            problems.append("seed must be >= 0")
        for name in ("pair_prob", "duplicate_prob", "decoy_prob", "min_visible", "color_jitter", "part_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1]")
        if not 0.0 < self.part_fraction_min <= self.part_fraction_max <= 0.5:
            problems.append("need 0 < part_fraction_min <= part_fraction_max <= 0.5")
        if not 0.03 <= self.object_scale_min <= self.object_scale_max <= 0.5:
            problems.append("need 0.03 <= object_scale_min <= object_scale_max <= 0.5")
        if not 0 <= self.clutter_min <= self.clutter_max:
            problems.append("need 0 <= clutter_min <= clutter_max")
        if self.texture_strength < 0 or self.noise_std < 0:
            problems.append("texture_strength and noise_std must be >= 0")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append("jpeg_quality must be in 1..100")
        if problems:
            raise GeneratorError("invalid generator settings: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------
# Classes: body polygons in a canonical frame (x right, y down, within about [-1, 1]) and a part
# score; the part is the top `fraction` of the body's area by that score, so its area fraction is
# exact by construction and survives any affine pose.

Polygon = tuple[tuple[float, float], ...]
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ClassSpec:
    """One foreground class: how its body looks and where its part is."""

    name: str
    body: tuple[Polygon, ...]
    part_score: ScoreFn
    part_hue: float  # degrees; the part is this hue, saturated
    part_name: str
    texture: str
    upright: bool  # small rotations only (furniture, bottles); otherwise any angle


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> Polygon:
    angles = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return tuple((cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles)


def _star(outer: float, inner: float, points: int = 5) -> Polygon:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return tuple((float(r * math.cos(a)), float(r * math.sin(a))) for r, a in zip(radii, angles, strict=True))


CLASS_SPECS: tuple[ClassSpec, ...] = (
    ClassSpec("chair", (_rect(-0.6, -1.0, -0.26, 0.05), _rect(-0.6, -0.05, 0.6, 0.24),
                        _rect(-0.6, 0.24, -0.33, 1.0), _rect(0.33, 0.24, 0.6, 1.0)),
              lambda u, v: -v, 0.0, "red cushion on top of the backrest", "slats", True),
    ClassSpec("table", (_rect(-1.0, -0.65, 1.0, -0.28), _rect(-0.92, -0.28, -0.65, 0.65),
                        _rect(0.65, -0.28, 0.92, 0.65)),
              lambda u, v: np.where(v < -0.28, -np.abs(u), -1e9), 225.0,
              "blue inlay in the middle of the top", "grain", True),
    ClassSpec("bottle", (((-0.42, 1.0), (0.42, 1.0), (0.42, -0.2), (0.16, -0.5), (0.16, -1.0),
                          (-0.16, -1.0), (-0.16, -0.5), (-0.42, -0.2)),),
              lambda u, v: -v, 125.0, "green cap", "cylinder", True),
    ClassSpec("kite", (((0.0, -1.0), (0.62, -0.3), (0.0, 1.0), (-0.62, -0.3)),),
              lambda u, v: v, 55.0, "yellow lower tip", "diamonds", False),
    ClassSpec("disc", (_ellipse(0.0, 0.0, 1.0, 1.0, 64),),
              lambda u, v: -np.hypot(u, v), 305.0, "magenta hub", "rings", False),
    ClassSpec("star", (_star(1.0, 0.42),),
              lambda u, v: -v, 185.0, "cyan tip of one arm", "speckle", False),
    ClassSpec("house", (_rect(-0.7, -0.15, 0.7, 1.0), ((-0.85, -0.15), (0.0, -1.0), (0.85, -0.15))),
              lambda u, v: -np.maximum(np.abs(u), (1.0 - v) / 2.5), 28.0, "orange door", "bricks",
              True),
    ClassSpec("fish", (_ellipse(0.15, 0.0, 0.85, 0.5), ((-0.55, 0.0), (-1.0, -0.45), (-1.0, 0.45))),
              lambda u, v: -np.hypot(u - 0.6, v + 0.12), 265.0, "violet eye spot", "scales", True),
)

# Muted colours shared by bodies (class k prefers 4 of them, overlapping its neighbours') and clutter.
BODY_PALETTE = np.array([
    (139, 115, 85), (168, 150, 122), (120, 118, 112), (98, 106, 86), (146, 136, 152),
    (106, 122, 138), (184, 174, 150), (128, 98, 92), (102, 118, 102), (158, 132, 104),
], dtype=np.float32)
TEXTURES = ("slats", "grain", "cylinder", "diamonds", "rings", "speckle", "bricks", "scales")


def class_names(num_classes: int) -> tuple[str, ...]:
    """The foreground class names of a dataset with ``num_classes`` classes (mask value = index + 1)."""
    return tuple(spec.name for spec in CLASS_SPECS[:num_classes])


def cooccurring_pair(num_classes: int) -> tuple[int, int] | None:
    """Class indices of the designated co-occurring pair, or None when there are fewer than 2 classes."""
    names = class_names(num_classes)
    if all(name in names for name in COOCCURRING_PAIR):
        return names.index(COOCCURRING_PAIR[0]), names.index(COOCCURRING_PAIR[1])
    return None


def image_id(split: str, index: int) -> str:
    """The id of image ``index`` of a split, e.g. ``train_000123``."""
    return validate_image_id(f"{split}_{index:06d}")


def split_ids(settings: GeneratorSettings, split: str) -> list[str]:
    """The ids of a split's images in order, as the generator names them and lists them in
    ``ImageSets/Segmentation/<split>.txt`` (every one has its mask): known from the settings alone,
    so the workflow checks ids against them before the dataset is generated."""
    if split not in SPLITS:
        raise GeneratorError(f"the generated dataset's splits are {', '.join(SPLITS)}, not {split!r}")
    count = settings.num_train if split == "train" else settings.num_val
    return [image_id(split, index) for index in range(count)]


# ----------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class _Pose:
    cx: float
    cy: float
    matrix: np.ndarray  # 2x2, canonical offsets -> pixel offsets


def _rotation(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


Region = tuple[slice, slice]


def _bbox(mask: np.ndarray) -> Region:
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    return slice(y, y + h), slice(x, x + w)


def _local_coords(pose: _Pose, size: int, region: Region | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Canonical coordinates (u, v) of the pixel centres of a region (default: the whole image)."""
    xs, ys = _pixel_grid(size)
    if region is not None:
        xs, ys = xs[region], ys[region]
    inv = np.linalg.inv(pose.matrix).astype(np.float32)
    dx, dy = xs - np.float32(pose.cx), ys - np.float32(pose.cy)
    return inv[0, 0] * dx + inv[0, 1] * dy, inv[1, 0] * dx + inv[1, 1] * dy


def _fill(polygons: Sequence[Polygon], pose: _Pose, size: int) -> np.ndarray:
    """Boolean (size, size) raster of the union of polygons placed by a pose (1/16 px precision)."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    points = []
    for polygon in polygons:
        pts = np.asarray(polygon, dtype=np.float64) @ pose.matrix.T + (pose.cx, pose.cy)
        points.append(np.round(pts * 16).astype(np.int32))
    for pts in points:  # one call per polygon: fillPoly's even-odd rule would cut overlaps out
        cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


@dataclass(frozen=True)
class _Canonical:
    area: float  # body area in canonical units
    half_width: float
    sorted_scores: np.ndarray  # part scores of the body's raster pixels, ascending


@cache
def _canonical(class_index: int) -> _Canonical:
    spec = CLASS_SPECS[class_index]
    resolution, extent = 512, 1.1
    scale = resolution / (2 * extent)
    pose = _Pose((resolution - 1) / 2, (resolution - 1) / 2, np.diag([scale, scale]))
    body = _fill(spec.body, pose, resolution)
    u, v = _local_coords(pose, resolution)
    half_width = max(abs(x) for polygon in spec.body for x, _ in polygon)
    return _Canonical(float(body.sum()) / scale**2, half_width, np.sort(spec.part_score(u[body], v[body])))


def _part_threshold(class_index: int, fraction: float) -> float:
    scores = _canonical(class_index).sorted_scores
    return float(scores[min(len(scores) - 1, int(round((1.0 - fraction) * len(scores))))])


# ----------------------------------------------------------------------------------------------
# Painting


def _hsv_rgb(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_degrees % 360) / 360, saturation, value), np.float32) * 255


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        return BODY_PALETTE[rng.integers(len(BODY_PALETTE))] * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    return _hsv_rgb(rng.uniform(0, 360), rng.uniform(0.04, 0.3), rng.uniform(0.35, 0.82))


def _value_noise(rng: np.random.Generator, size: int, octaves: Sequence[int] = (3, 6, 12, 24)) -> np.ndarray:
    """Smooth multi-scale noise in about [-1, 1]."""
    out = np.zeros((size, size), np.float32)
    amplitude, total = 1.0, 0.0
    for cells in octaves:
        grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
        out += amplitude * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amplitude
        amplitude *= 0.55
    return out / total


def _waves(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, low: float, high: float,
           count: int = 4) -> np.ndarray:
    """Sum of random plane waves in canonical coordinates: noise that rotates with its object."""
    out = np.zeros_like(u)
    for _ in range(count):
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(low, high), rng.uniform(0, 2 * np.pi)
        out += np.sin(np.float32(2 * np.pi * freq) * (math.cos(angle) * u + math.sin(angle) * v) + np.float32(phase))
    return out / math.sqrt(count / 2)


def _texture(kind: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A texture in about [-1, 1], in canonical coordinates (units of the object's half size)."""
    two_pi = np.float32(2 * np.pi)
    freq, phase = np.float32(rng.uniform(2.5, 4.0)), np.float32(rng.uniform(0, 2 * np.pi))
    if kind == "slats":
        return np.tanh(3 * np.sin(two_pi * freq * v + phase))
    if kind == "grain":
        return np.sin(two_pi * 1.3 * freq * v + 1.5 * _waves(rng, u, v, 0.5, 1.5, 2) + phase)
    if kind == "cylinder":
        offset = np.float32(rng.uniform(-0.2, 0.2))
        return 1.6 * np.exp(-(((u - offset) / np.float32(0.12)) ** 2)) - 0.6
    if kind == "diamonds":
        d = np.float32(math.sqrt(0.5))
        return np.sin(two_pi * freq * d * (u + v) + phase) * np.sin(two_pi * freq * d * (u - v))
    if kind == "rings":
        return np.sin(two_pi * freq * np.hypot(u, v) + phase)
    if kind == "speckle":
        return np.clip(_waves(rng, u, v, 6.0, 10.0, 6), -1.5, 1.5) / 1.5
    if kind == "bricks":
        # Rows of bricks, each row's joints shifted by half a brick.
        rows = np.floor(freq * v + phase / two_pi)
        mortar_v = np.tanh(4 * np.sin(two_pi * freq * v + phase))
        mortar_u = np.tanh(4 * np.sin(two_pi * 0.8 * freq * u + np.float32(np.pi) * rows))
        return 0.5 * mortar_v + 0.5 * mortar_u
    if kind == "scales":
        return np.sin(two_pi * 1.5 * freq * u + phase) * np.sin(two_pi * 1.5 * freq * v)
    raise ValueError(f"unknown texture {kind!r}")


def _composite(canvas: np.ndarray, region: Region, mask: np.ndarray, layer: np.ndarray,
               alpha: float = 1.0) -> None:
    """Paints ``layer`` (the size of ``region``) where the full-size ``mask`` is set."""
    target, inside = canvas[region], mask[region]
    if alpha >= 1.0:
        target[inside] = layer[inside]
    else:
        target[inside] = alpha * layer[inside] + (1.0 - alpha) * target[inside]


def _shaded_layer(colour: np.ndarray, modulation: np.ndarray) -> np.ndarray:
    return colour[None, None, :] * modulation[..., None]


def _darken_edge(canvas: np.ndarray, mask: np.ndarray) -> None:
    edge = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    canvas[edge] *= 0.82


def _background(rng: np.random.Generator, settings: GeneratorSettings) -> np.ndarray:
    size = settings.image_size
    xs, ys = _pixel_grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = math.cos(angle) * xs + math.sin(angle) * ys
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    first, second = _muted_colour(rng), _muted_colour(rng)
    canvas = first[None, None, :] * (1 - ramp[..., None]) + second[None, None, :] * ramp[..., None]
    canvas *= (1 + 0.22 * _value_noise(rng, size))[..., None]
    chroma = np.stack([_value_noise(rng, size, (4, 8)) for _ in range(3)], axis=-1)
    return canvas * (1 + 0.05 * chroma)


def _draw_clutter(rng: np.random.Generator, canvas: np.ndarray, settings: GeneratorSettings) -> None:
    size = settings.image_size
    for _ in range(int(rng.integers(settings.clutter_min, settings.clutter_max + 1))):
        kind = rng.choice(("ellipse", "blob", "stripes", "stick"), p=(0.3, 0.3, 0.25, 0.15))
        radius = size * rng.uniform(0.05, 0.22)
        if kind == "stick":
            width = rng.uniform(1.0, 3.0) / radius
            shape = _rect(-1.0, -width, 1.0, width)
        elif kind == "stripes":
            shape = _rect(-1.0, -rng.uniform(0.25, 0.7), 1.0, rng.uniform(0.25, 0.7))
        elif kind == "ellipse":
            shape = _ellipse(0.0, 0.0, 1.0, rng.uniform(0.3, 1.0), 40)
        else:
            count = int(rng.integers(5, 10))
            angles = np.sort(rng.uniform(0, 2 * np.pi, count))
            radii = rng.uniform(0.45, 1.0, count)
            shape = tuple((float(r * math.cos(a)), float(r * math.sin(a))) for r, a in zip(radii, angles, strict=True))
        pose = _Pose(rng.uniform(0, size), rng.uniform(0, size),
                     _rotation(rng.uniform(0, 180)) @ np.diag([radius, radius]))
        mask = _fill((shape,), pose, size)
        region = _bbox(mask)
        u, v = _local_coords(pose, size, region)
        colour = _muted_colour(rng)
        if kind == "stripes":
            other = _muted_colour(rng)
            mix = 0.5 + 0.5 * np.tanh(3 * np.sin(np.float32(2 * np.pi * rng.uniform(2, 5)) * v))
            layer = colour[None, None, :] * mix[..., None] + other[None, None, :] * (1 - mix[..., None])
        else:
            texture = _texture(str(rng.choice(TEXTURES)), rng, u, v)
            layer = _shaded_layer(colour, 1 + rng.uniform(0.0, 0.25) * texture)
        _composite(canvas, region, mask, layer, rng.uniform(0.55, 1.0))
        if kind != "stick" and rng.random() < 0.3:
            _darken_edge(canvas, mask)  # outlines are no object cue either


@dataclass
class _Object:
    class_index: int
    pose: _Pose
    region: Region  # bounding box of the body
    u: np.ndarray  # canonical coordinates over the region
    v: np.ndarray
    body: np.ndarray  # full image size
    part: np.ndarray
    expected_area: float  # analytic area in pixels, unclipped by the image border


def _sample_pose(rng: np.random.Generator, settings: GeneratorSettings, class_index: int,
                 shrink: float, near: _Object | None) -> _Pose:
    size = settings.image_size
    spec = CLASS_SPECS[class_index]
    scale = size * rng.uniform(settings.object_scale_min, settings.object_scale_max) * shrink
    aspect = math.exp(rng.uniform(-0.15, 0.15))
    angle = rng.uniform(-15, 15) if spec.upright else rng.uniform(-180, 180)
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    matrix = _rotation(angle) @ np.diag([mirror * scale * aspect, scale / aspect])
    if near is None:
        cx, cy = rng.uniform(0.15 * size, 0.85 * size, 2)
    else:
        # Partner objects stand beside their anchor (a chair at its table), touching or overlapping.
        near_half = _canonical(near.class_index).half_width * abs(near.pose.matrix[0, 0])
        gap = (near_half + _canonical(class_index).half_width * scale * aspect) * rng.uniform(0.7, 1.0)
        cx = near.pose.cx + (gap if rng.random() < 0.5 else -gap)
        cy = near.pose.cy + size * rng.uniform(-0.1, 0.1)
        cx, cy = np.clip((cx, cy), 0.1 * size, 0.9 * size)
    return _Pose(float(cx), float(cy), matrix)


def _sample_object(rng: np.random.Generator, settings: GeneratorSettings, class_index: int,
                   shrink: float, near: _Object | None) -> _Object:
    size = settings.image_size
    spec = CLASS_SPECS[class_index]
    pose = _sample_pose(rng, settings, class_index, shrink, near)
    fraction = rng.uniform(settings.part_fraction_min, settings.part_fraction_max)
    body = _fill(spec.body, pose, size)
    region = _bbox(body)
    u, v = _local_coords(pose, size, region)
    part = np.zeros_like(body)
    part[region] = body[region] & (spec.part_score(u, v) >= _part_threshold(class_index, fraction))
    expected = _canonical(class_index).area * abs(float(np.linalg.det(pose.matrix)))
    return _Object(class_index, pose, region, u, v, body, part, expected)


def _sample_classes(rng: np.random.Generator, settings: GeneratorSettings,
                    index: int) -> list[tuple[int, int | None]]:
    """(class, index of the object it stands beside or None) for each object, in drawing order."""
    num_classes = settings.num_classes
    if settings.single_object:
        return [(index % num_classes, None)]  # balanced classes for WSOL
    count = int(rng.integers(settings.min_objects, settings.max_objects + 1))
    pair = cooccurring_pair(num_classes)
    chosen: list[tuple[int, int | None]] = []
    # Every class can be drawn at any position, so "no other class's part in the image" never
    # implies chair or table (a non-local shortcut a classifier would otherwise learn); a drawn
    # chair or table brings its partner beside it with probability pair_prob.
    while len(chosen) < count:
        present = [c for c, _ in chosen]
        pool = [c for c in range(num_classes) if c not in present]
        if not pool or (present and rng.random() < settings.duplicate_prob):
            pool = present
        # Half weight for the pair's classes: their partners make up the rest of their frequency.
        weights = np.array([0.5 if pair is not None and c in pair else 1.0 for c in pool])
        drawn = pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
        chosen.append((drawn, None))
        if pair is not None and drawn in pair and len(chosen) < settings.max_objects:
            partner = pair[1] if drawn == pair[0] else pair[0]
            if partner not in present and rng.random() < settings.pair_prob:
                chosen.append((partner, len(chosen) - 1))
    return chosen


_MAX_TRIES = 40


def _place_objects(rng: np.random.Generator, settings: GeneratorSettings,
                   plan: list[tuple[int, int | None]]) -> list[_Object]:
    """Samples poses until every earlier object keeps `min_visible` of its area and half its part."""
    placed: list[_Object] = []
    visible: list[np.ndarray] = []
    for position, (class_index, near_index) in enumerate(plan):
        near = placed[near_index] if near_index is not None and near_index < len(placed) else None
        chosen, best, best_score = None, None, -2.0
        for attempt in range(_MAX_TRIES):
            candidate = _sample_object(rng, settings, class_index, 0.9 ** (attempt // 10), near)
            # At least 85 % of the object and of its part inside the image, else a score below 0.
            in_frame = min(candidate.body.sum() / (0.85 * candidate.expected_area),
                           candidate.part.sum() / (0.85 * settings.part_fraction_min * candidate.expected_area))
            score = 1.0 if in_frame >= 1.0 else in_frame - 1.0
            for obj, vis in zip(placed, visible, strict=True):
                if score < 0:
                    break
                kept = vis & ~candidate.body
                score = min(score, kept.sum() / obj.body.sum() / settings.min_visible,
                            (kept & obj.part).sum() / max(obj.part.sum(), 1) / 0.5)
            if score >= 1.0:
                chosen = candidate
                break
            if score > best_score:
                best, best_score = candidate, score
        if chosen is None:
            if position >= settings.min_objects or best is None:
                continue  # drop it: the scene is full
            chosen = best
        visible = [vis & ~chosen.body for vis in visible] + [chosen.body.copy()]
        placed.append(chosen)
    return [obj for obj, vis in zip(placed, visible, strict=True) if vis.any()]


def _paint_object(rng: np.random.Generator, canvas: np.ndarray, obj: _Object,
                  settings: GeneratorSettings) -> bool:
    """Paints the body and, with probability part_prob, the part; returns whether the part shows."""
    spec = CLASS_SPECS[obj.class_index]
    preferred = [(3 * obj.class_index + j) % len(BODY_PALETTE) for j in range(4)]
    colour = BODY_PALETTE[preferred[int(rng.integers(4))]] * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    shade = 1 + np.float32(0.12) * (math.cos(light) * obj.u + math.sin(light) * obj.v)
    texture = _texture(spec.texture, rng, obj.u, obj.v)
    layer = _shaded_layer(colour, (1 + settings.texture_strength * texture) * shade)
    _composite(canvas, obj.region, obj.body, layer)
    if rng.random() < 0.6:
        _darken_edge(canvas, obj.body)
    if rng.random() >= settings.part_prob:
        return False  # seen from a side that hides the part: only the body tells the class
    part_colour = _hsv_rgb(spec.part_hue + rng.uniform(-6, 6), rng.uniform(0.8, 1.0), rng.uniform(0.8, 0.97))
    grain = 1 + np.float32(0.05) * _waves(rng, obj.u, obj.v, 4.0, 8.0, 2)
    _composite(canvas, obj.region, obj.part, _shaded_layer(part_colour, grain * shade))
    return True


def _draw_decoy(rng: np.random.Generator, canvas: np.ndarray, settings: GeneratorSettings) -> None:
    """A faded, part-less class body in the background: body shape alone is not the class."""
    class_index = int(rng.integers(settings.num_classes))
    pose = _sample_pose(rng, settings, class_index, 1.0, None)
    mask = _fill(CLASS_SPECS[class_index].body, pose, settings.image_size)
    region = _bbox(mask)
    u, v = _local_coords(pose, settings.image_size, region)
    texture = _texture(str(rng.choice(TEXTURES)), rng, u, v)
    layer = _shaded_layer(_muted_colour(rng), 1 + settings.texture_strength * texture)
    _composite(canvas, region, mask, layer, rng.uniform(0.45, 0.8))


def _finish(rng: np.random.Generator, canvas: np.ndarray, settings: GeneratorSettings) -> np.ndarray:
    jitter = settings.color_jitter
    mean = canvas.mean()
    canvas = (canvas - mean) * (1 + rng.uniform(-jitter, jitter)) + mean * (1 + rng.uniform(-jitter, jitter))
    canvas = canvas * (1 + rng.uniform(-jitter, jitter, 3)).astype(np.float32)
    canvas = cv2.GaussianBlur(canvas.astype(np.float32), (0, 0), 0.6)
    canvas += rng.normal(0.0, settings.noise_std, canvas.shape).astype(np.float32)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# One image


@dataclass(frozen=True)
class ObjectInfo:
    """One object instance of a rendered image (areas in pixels, box inclusive, from visible pixels)."""

    class_index: int
    box: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max
    area: int  # whole object, occluders ignored
    part_area: int
    visible_area: int
    visible_part_area: int

    @property
    def part_fraction(self) -> float:
        return self.part_area / self.area


@dataclass(frozen=True)
class RenderedImage:
    image_id: str
    image: np.ndarray  # (S, S, 3) uint8 RGB
    mask: np.ndarray  # (S, S) uint8: 0 background, k = class k (1-based), 255 void
    instances: np.ndarray  # (S, S) uint8: 0 background, i + 1 = visible pixels of objects[i]
    parts: np.ndarray  # (S, S) bool: visible part pixels
    objects: tuple[ObjectInfo, ...]

    @property
    def labels(self) -> tuple[int, ...]:
        return tuple(sorted({obj.class_index for obj in self.objects}))


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def render_image(settings: GeneratorSettings, split: str, index: int) -> RenderedImage:
    """Renders image ``index`` of ``split`` ('train' or 'val'); depends on no other image."""
    if split not in SPLITS:
        raise GeneratorError(f"split must be one of {SPLITS}, not {split!r}")
    rng = _image_rng(settings.seed, split, index)
    size = settings.image_size
    plan = _sample_classes(rng, settings, index)
    canvas = _background(rng, settings)
    _draw_clutter(rng, canvas, settings)
    if rng.random() < settings.decoy_prob:
        _draw_decoy(rng, canvas, settings)
    objects = _place_objects(rng, settings, plan)
    shows_part = [_paint_object(rng, canvas, obj, settings) for obj in objects]
    image = _finish(rng, canvas, settings)

    instances = np.zeros((size, size), np.uint8)
    for number, obj in enumerate(objects, start=1):
        instances[obj.body] = number
    class_of = np.array([0] + [obj.class_index + 1 for obj in objects], np.uint8)
    mask = class_of[instances]
    kernel = np.ones((3, 3), np.uint8)
    # Pixels whose 3x3 neighbourhood meets another instance or the background: a 2 px band.
    mask[cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)] = IGNORE_LABEL
    parts = np.zeros((size, size), bool)
    infos = []
    for number, (obj, shown) in enumerate(zip(objects, shows_part, strict=True), start=1):
        own = instances == number
        ys, xs = np.nonzero(own)
        visible_part = own & obj.part if shown else np.zeros_like(own)
        parts |= visible_part
        infos.append(ObjectInfo(obj.class_index, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                                int(obj.body.sum()), int(obj.part.sum()), int(own.sum()),
                                int(visible_part.sum())))
    return RenderedImage(image_id(split, index), image, mask, instances, parts, tuple(infos))


# ----------------------------------------------------------------------------------------------
# The dataset on disk


def check_output_folder(out_dir: Path) -> None:
    """Raises GeneratorError unless ``out_dir`` is absent, empty, or a dataset this generator wrote
    (holding nothing else): the generator never replaces a folder of someone else's files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise GeneratorError(f"output path exists and is not a folder: {out_dir}")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    marker = out_dir / "dataset.json"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or info.get("generator") != GENERATOR_NAME:
        raise GeneratorError(
            f"refusing to write into {out_dir}: it is not empty and holds no dataset.json written by "
            f"{GENERATOR_NAME}; choose an empty or new folder"
        )
    unexpected = sorted(p.name for p in out_dir.iterdir() if p.name not in _OUTPUT_ENTRIES)
    if unexpected:
        raise GeneratorError(
            f"refusing to replace {out_dir}: besides a generated dataset it holds {unexpected[:10]}, "
            "which the generator did not write; move them away first"
        )


def _summary(settings: GeneratorSettings, rendered: list[RenderedImage]) -> dict[str, Any]:
    names = class_names(settings.num_classes)
    objects = [obj for r in rendered for obj in r.objects]
    fractions = np.array([obj.part_fraction for obj in objects])
    counts = np.bincount([len(r.objects) for r in rendered], minlength=settings.max_objects + 1)
    summary: dict[str, Any] = {
        "images": len(rendered),
        "objects": len(objects),
        "objects_per_image": {str(n): int(counts[n]) for n in range(1, len(counts)) if counts[n]},
        "class_images": {names[c]: sum(c in r.labels for r in rendered) for c in range(len(names))},
        "class_objects": {names[c]: sum(o.class_index == c for o in objects) for c in range(len(names))},
        "part_fraction": {"mean": round(float(fractions.mean()), 4), "min": round(float(fractions.min()), 4),
                          "max": round(float(fractions.max()), 4)},
        "visible_fraction_mean": round(float(np.mean([o.visible_area / o.area for o in objects])), 4),
        "object_area_fraction_mean": round(
            float(np.mean([(r.instances > 0).mean() for r in rendered])), 4),
        "void_fraction_mean": round(float(np.mean([(r.mask == IGNORE_LABEL).mean() for r in rendered])), 4),
    }
    pair = cooccurring_pair(settings.num_classes)
    if pair is not None:
        either = sum(pair[0] in r.labels or pair[1] in r.labels for r in rendered)
        both = sum(pair[0] in r.labels and pair[1] in r.labels for r in rendered)
        summary["pair_images"] = {"either": either, "both": both}
    return summary


def _write_dataset(root: Path, settings: GeneratorSettings) -> dict[str, Any]:
    names = class_names(settings.num_classes)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    label_rows: list[list[str]] = []
    box_rows: list[list[str | int]] = []
    summaries = {}
    for split in SPLITS:
        ids = split_ids(settings, split)
        rendered = []
        for index in range(len(ids)):
            r = render_image(settings, split, index)
            write_image(root / "JPEGImages" / f"{r.image_id}.jpg", r.image, settings.jpeg_quality)
            write_label_mask(root / "SegmentationClass" / f"{r.image_id}.png", r.mask)
            label_rows.append([r.image_id, " ".join(names[c] for c in r.labels)])
            box_rows.extend([r.image_id, names[o.class_index], *o.box] for o in r.objects)
            # Only the statistics are kept, not the pixels.
            rendered.append(dataclasses.replace(r, image=np.empty(0, np.uint8)))
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        summaries[split] = _summary(settings, rendered)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image_id", "labels"])
        writer.writerows(label_rows)
    with (root / "boxes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image_id", "class", "x_min", "y_min", "x_max", "y_max"])
        writer.writerows(box_rows)
    pair = cooccurring_pair(settings.num_classes)
    info = {
        "generator": GENERATOR_NAME,
        "format_version": FORMAT_VERSION,
        "settings": dataclasses.asdict(settings),
        "classes": list(names),
        "parts": {spec.name: spec.part_name for spec in CLASS_SPECS[:settings.num_classes]},
        "cooccurring_pair": [names[i] for i in pair] if pair is not None else None,
        "splits": summaries,
    }
    (root / "dataset.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def generate_dataset(out_dir: Path, settings: GeneratorSettings) -> dict[str, Any]:
    """Writes the dataset to ``out_dir`` (new, empty, or an earlier output of this generator, which
    is replaced whole) and returns what it writes to dataset.json: settings and per-split counts.

    Files are written into a temporary sibling folder that is renamed into place at the end, so an
    interrupted run leaves no half-written dataset and old and new files never mix.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = out_dir.parent / f".{out_dir.name}.tmp-{token}"
    staging.mkdir()
    try:
        info = _write_dataset(staging, settings)
        if out_dir.exists():
            check_output_folder(out_dir)  # again: something may have appeared meanwhile
            retired = out_dir.parent / f".{out_dir.name}.old-{token}"
            out_dir.rename(retired)
            staging.rename(out_dir)
            shutil.rmtree(retired)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info
