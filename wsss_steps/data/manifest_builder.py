"""A split's manifest, built from a dataset adapter with every image checked (`build_manifest`).

Checks: every image and mask decoded in full (sizes, mask values, damaged or oversized files),
image-level labels against the mask where they come from another file
(`label_mask_disagreement`, ``dataset.label_mask_check``), boxes inside their image. Masks that
are not label PNGs (an adapter that ``converts_masks``) are written once as label PNGs under the
dataset's results (`_write_converted_mask`). The layouts themselves: `wsss_steps.data.adapters`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss_steps.data.adapters import DatasetAdapter
from wsss_steps.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IGNORE_LABEL,
    check_image_bytes,
    content_digest,
    read_label_mask,
    write_label_mask,
)
from wsss_steps.data.manifest import (
    MAX_LISTED_PROBLEMS,
    Box,
    DatasetError,
    ImageRecord,
    Manifest,
    check_box,
)

log = logging.getLogger(__name__)


def _write_converted_mask(dataset: Any, image_id: str, mask_dir: Path) -> Path:
    """The adapter's label mask of an image as a PNG in ``mask_dir`` (atomically; rewritten only
    when its content differs, so the manifest's digests stay put on a rerun)."""
    mask = dataset.label_mask(image_id)
    path = Path(mask_dir) / f"{image_id}.png"
    if path.is_file():
        try:
            if np.array_equal(read_label_mask(path), mask):
                return path
        except ValueError:
            pass
    tmp = path.with_name(f".{image_id}.tmp.png")
    write_label_mask(tmp, mask)
    tmp.replace(path)
    return path


LABEL_MASK_CHECKS = ("strict", "allow_void_only", "none")


def label_mask_disagreement(labels: Sequence[int], mask_values: np.ndarray, check: str) -> str:
    """Where image-level labels and a mask (its distinct values, ``np.unique``) disagree: '' when
    they agree under ``check``.

    ``strict``: the labels are exactly the classes with pixels in the mask. ``allow_void_only``: a
    label may also have no pixel where the mask has void (255) pixels (an object annotated as void
    or crowd). A class with pixels but no label is refused under both; ``none`` checks nothing."""
    if check == "none":
        return ""
    present = {int(v) - 1 for v in mask_values if v not in (0, IGNORE_LABEL)}
    missing_labels = sorted(present - set(labels))
    without_pixels = sorted(set(labels) - present)
    if check == "allow_void_only" and IGNORE_LABEL in mask_values:
        without_pixels = []
    parts = []
    if missing_labels:
        parts.append(f"classes {missing_labels} have pixels in the mask but no label")
    if without_pixels:
        parts.append(f"labels {without_pixels} have no pixel in the mask")
    return "; ".join(parts)


def _fit_rounded_box(box: Box, height: int, width: int) -> Box:
    """A box of float coordinates rounded to pixels may pass the image's border by a pixel, and one
    under a pixel wide or high may round to nothing (max = min − 1): both keep their pixel, inside
    the image. Boxes further out or inverted by more stay so, for `build_manifest` to refuse."""

    def fit(low: int, high: int, size: int) -> tuple[int, int]:
        if high == low - 1:
            high = low
        return (size - 1 if low == size else low), min(high, size - 1)

    (x_min, x_max), (y_min, y_max) = fit(box.x_min, box.x_max, width), fit(box.y_min, box.y_max, height)
    return box._replace(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max)


def build_manifest(dataset: DatasetAdapter, split: str, require_masks: bool,
                   max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                   mask_dir: Path | None = None, label_mask_check: str = "strict") -> Manifest:
    """Checks every image of a split and returns its manifest.

    All problems are collected and raised together (up to a limit), each naming its file or id, so
    one run shows what to fix. Every image is decoded in full (damaged or truncated files, images
    above ``max_image_pixels``) and every mask (sizes, values), and the digest of their bytes is
    recorded (the manifest's content identity). An adapter that ``converts_masks`` has its masks
    written as label PNGs into ``mask_dir`` (required then), and those are the records' masks.
    Where labels come from another file than the masks (``labels.csv``, VOC's XML annotations:
    the adapter's ``labels_independent_of_masks``), each image's labels are checked against its
    mask (`label_mask_disagreement` under ``label_mask_check``).
    """
    if label_mask_check not in LABEL_MASK_CHECKS:
        raise ValueError(f"label_mask_check must be one of {LABEL_MASK_CHECKS}, not {label_mask_check!r}")
    check_labels = bool(getattr(dataset, "labels_independent_of_masks", False)) and label_mask_check != "none"
    rotated: list[str] = []
    converts = bool(getattr(dataset, "converts_masks", False))
    if converts and mask_dir is None:
        raise ValueError(f"dataset {dataset.name!r}: its masks are converted; build_manifest needs a mask_dir")
    # message → images it concerns: a problem of a shared file (a bad labels.csv row) fails every
    # image alike and is listed once, with its count of images
    problems: dict[str, int] = {}
    stopped = False
    unlabelled_boxes: list[str] = []  # "id (class)" of boxes of a class the image's labels lack
    manifest = Manifest(dataset.name, split, dataset.class_names)
    num_classes = len(dataset.class_names)
    for image_id in dataset.split_ids(split):
        try:
            labels = dataset.labels(image_id)
            if not labels:
                raise DatasetError(f"image {image_id!r} of split {split!r} has no image-level label")
            image_path = dataset.image_path(image_id)
            if not image_path.is_file():
                raise DatasetError(f"image {image_id!r}: file not found: {image_path}")
            mask_path = dataset.mask_path(image_id)
            if converts and mask_path is not None:
                assert mask_dir is not None
                mask_path = _write_converted_mask(dataset, image_id, mask_dir)
            if mask_path is None and require_masks:
                raise DatasetError(f"image {image_id!r}: no ground-truth mask for split {split!r}")
            image_bytes = image_path.read_bytes()
            height, width, orientation = check_image_bytes(image_bytes, image_path, max_image_pixels)
            if mask_path is not None:
                mask = read_label_mask(mask_path, max_image_pixels)
                if mask.shape != (height, width):
                    raise DatasetError(f"mask {mask_path} is {mask.shape}, its image is {(height, width)}")
                values = np.unique(mask)
                bad = sorted(set(values.tolist()) - set(range(num_classes + 1)) - {IGNORE_LABEL})
                if bad:
                    raise DatasetError(
                        f"mask {mask_path} has values {bad} outside 0..{num_classes} and {IGNORE_LABEL}"
                    )
                disagreement = label_mask_disagreement(labels, values, label_mask_check) if check_labels else ""
                if disagreement:
                    names = dataset.class_names
                    raise DatasetError(
                        f"image {image_id!r}: its labels {[names[i] for i in labels]} disagree with its mask "
                        f"{mask_path} ({disagreement}; classes by 0-based index of classes.txt). Fix the "
                        "labels or the mask; dataset.label_mask_check: allow_void_only accepts labels "
                        "whose object is void in the mask, none checks nothing")
            if orientation not in (None, 1):
                rotated.append(image_id)
            digest = content_digest(image_bytes, mask_path.read_bytes() if mask_path else None)
            boxes = dataset.boxes(image_id)
            if converts:  # boxes of float coordinates (CUB, COCO) rounded to pixels
                boxes = tuple(_fit_rounded_box(b, height, width) for b in boxes)
            outside = [b for b in boxes
                       if max(b.x_min, b.x_max) >= width or max(b.y_min, b.y_max) >= height]
            if outside:
                raise DatasetError(f"image {image_id!r}: box {tuple(outside[0])[1:]} lies outside the "
                                   f"{width}×{height} image")
            boxes = tuple(check_box(b, f"image {image_id!r}") for b in boxes)
            unlabelled_boxes += [f"{image_id} ({dataset.class_names[c]})" for c in sorted({b.label for b in boxes})
                                 if c not in labels]
            manifest.records.append(ImageRecord(image_id, image_path, mask_path, labels, height, width, boxes,
                                                digest))
        except (DatasetError, ValueError, FileNotFoundError) as error:
            problems[str(error)] = problems.get(str(error), 0) + 1
            # also bounded in images: each image re-reads a shared file that fails
            if len(problems) >= MAX_LISTED_PROBLEMS or sum(problems.values()) >= 10 * MAX_LISTED_PROBLEMS:
                stopped = True
                break
    if unlabelled_boxes:
        log.warning("dataset %r, split %r: %d box class(es) are not among their image's labels (the boxes are kept; "
                    "check the labels and the boxes): %s", dataset.name, split, len(unlabelled_boxes),
                    ", ".join(unlabelled_boxes[:10]))
    if rotated:
        log.warning("dataset %r, split %r: %d image(s) carry an EXIF orientation flag; every step reads their "
                    "pixels as stored, as their masks are (the flag is not applied): %s", dataset.name, split,
                    len(rotated), " ".join(rotated[:MAX_LISTED_PROBLEMS]))
    if problems:
        listed = [message if count == 1 else f"{message} (the same for {count} images)"
                  for message, count in problems.items()]
        if stopped:
            listed.append(f"... (stopped listing after {sum(problems.values())} image(s) with problems)")
        raise DatasetError(f"dataset {dataset.name!r}, split {split!r}: {len(problems)} problem(s):\n  "
                           + "\n  ".join(listed))
    return manifest


