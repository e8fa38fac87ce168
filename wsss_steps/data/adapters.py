"""Dataset adapters and the manifest every later step reads.

Adapters know one on-disk layout each; `prepare_data` turns any of them into a validated
manifest (`classes.txt` + one `{split}.csv` per split) so no other step parses dataset layouts.

Layouts:
- ``voc_layout`` (the generated dataset and a user's own): ``JPEGImages/{id}.jpg``,
  ``SegmentationClass/{id}.png`` (optional per image), ``ImageSets/Segmentation/{split}.txt``,
  ``classes.txt`` (foreground class names, one a line, mask value = line number) and
  ``labels.csv`` (columns ``image_id,labels``; labels are class names separated by spaces).
- ``voc2012``: a ``VOCdevkit/VOC2012`` folder; masks from ``SegmentationClassAug/`` (SBD converted,
  as IRN and AdvCAM use) or ``SegmentationClass/``; image-level labels from the masks (as IRN's
  ``make_cls_labels``) or from ``Annotations/*.xml``.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wsss_steps.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IGNORE_LABEL,
    check_image_bytes,
    content_digest,
    read_label_mask,
)
from wsss_steps.data.manifest import (
    MAX_LISTED_PROBLEMS,
    Box,
    DatasetError,
    ImageRecord,
    Manifest,
    read_lines,
    validate_image_id,
)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


def _read_split_ids(path: Path) -> list[str]:
    # VOC's classification ImageSets have "id label" lines; the segmentation ones only "id".
    ids = [line.split()[0] for line in read_lines(path)]
    for image_id in ids:
        validate_image_id(image_id, str(path))
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if duplicates:
        raise DatasetError(f"split file {path} lists ids more than once: {duplicates[:10]}")
    if not ids:
        raise DatasetError(f"split file {path} lists no image")
    return ids


def _read_boxes(path: Path, class_names: Sequence[str]) -> dict[str, tuple[Box, ...]]:
    if not path.is_file():
        return {}
    index = {name: i for i, name in enumerate(class_names)}
    boxes: dict[str, list[Box]] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {"image_id", "class", "x_min", "y_min", "x_max", "y_max"}
        if reader.fieldnames is None or not columns <= set(reader.fieldnames):
            raise DatasetError(f"{path}: needs the columns {','.join(sorted(columns))}; found {reader.fieldnames}")
        for line_number, row in enumerate(reader, start=2):
            where = f"{path} line {line_number}"
            image_id = validate_image_id(row["image_id"].strip(), where)
            if row["class"] not in index:
                raise DatasetError(f"{where}: unknown class {row['class']!r}; known classes: {list(class_names)}")
            try:
                x_min, y_min, x_max, y_max = (int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            except ValueError as error:
                raise DatasetError(f"{where}: box coordinates must be integers ({error})") from error
            if not (0 <= x_min <= x_max and 0 <= y_min <= y_max):
                raise DatasetError(f"{where}: need 0 <= x_min <= x_max and 0 <= y_min <= y_max")
            boxes.setdefault(image_id, []).append(Box(index[row["class"]], x_min, y_min, x_max, y_max))
    return {image_id: tuple(items) for image_id, items in boxes.items()}


class DatasetAdapter(Protocol):
    """What `build_manifest` reads of a dataset, whatever its layout."""

    name: str
    class_names: tuple[str, ...]

    def split_ids(self, split: str) -> list[str]: ...
    def image_path(self, image_id: str) -> Path: ...
    def mask_path(self, image_id: str) -> Path | None: ...
    def labels(self, image_id: str) -> tuple[int, ...]: ...
    def boxes(self, image_id: str) -> tuple[Box, ...]: ...
    def source_files(self, split: str) -> list[Path]: ...


def _image_and_mask_files(dataset: DatasetAdapter, split: str) -> list[Path]:
    files = []
    for image_id in dataset.split_ids(split):
        files.append(dataset.image_path(image_id))
        mask = dataset.mask_path(image_id)
        if mask is not None:
            files.append(mask)
    return files


class VocLayoutDataset:
    """The generated dataset and users' own datasets: VOC folders plus classes.txt and labels.csv."""

    def __init__(self, root: str | Path, name: str = "custom", labels_csv: str | Path | None = None,
                 class_names: Sequence[str] | None = None):
        self.root = Path(root)
        self.name = name
        if not self.root.is_dir():
            raise DatasetError(f"dataset {name!r}: root folder not found: {self.root}")
        if class_names is None:
            class_names = read_lines(self.root / "classes.txt")
        self.class_names = tuple(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise DatasetError(f"dataset {name!r}: class names repeat: {self.class_names}")
        self.labels_csv = Path(labels_csv) if labels_csv else self.root / "labels.csv"
        self._labels: dict[str, tuple[int, ...]] | None = None
        self._boxes: dict[str, tuple[Box, ...]] | None = None

    def split_ids(self, split: str) -> list[str]:
        return _read_split_ids(self._split_file(split))

    def _split_file(self, split: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{split}.txt"

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        path = self.root / "SegmentationClass" / f"{image_id}.png"
        return path if path.is_file() else None

    def _load_labels(self) -> dict[str, tuple[int, ...]]:
        if self._labels is None:
            if not self.labels_csv.is_file():
                raise DatasetError(f"dataset {self.name!r}: labels file not found: {self.labels_csv}")
            index = {name: i for i, name in enumerate(self.class_names)}
            labels: dict[str, tuple[int, ...]] = {}
            first_line: dict[str, int] = {}
            with self.labels_csv.open(newline="") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None or not {"image_id", "labels"} <= set(reader.fieldnames):
                    raise DatasetError(f"{self.labels_csv}: needs the columns image_id,labels; found {reader.fieldnames}")
                for line_number, row in enumerate(reader, start=2):
                    image_id = validate_image_id(row["image_id"].strip(), f"{self.labels_csv} line {line_number}")
                    names = (row["labels"] or "").split()
                    unknown = [n for n in names if n not in index]
                    if unknown:
                        raise DatasetError(
                            f"{self.labels_csv} line {line_number}: image {image_id!r} has unknown class "
                            f"name(s) {unknown}; known classes: {list(self.class_names)}"
                        )
                    if image_id in labels:
                        raise DatasetError(f"{self.labels_csv} line {line_number}: image {image_id!r} has a "
                                           f"second row (line {first_line[image_id]}); give each image one row")
                    first_line[image_id] = line_number
                    labels[image_id] = tuple(sorted({index[n] for n in names}))
            self._labels = labels
        return self._labels

    def labels(self, image_id: str) -> tuple[int, ...]:
        labels = self._load_labels()
        if image_id not in labels:
            raise DatasetError(f"image {image_id!r} has no row in {self.labels_csv}")
        return labels[image_id]

    def source_files(self, split: str) -> list[Path]:
        """Every file the split's manifest is built from (what the workflow tracks for reruns)."""
        files = [self.root / "classes.txt", self.labels_csv, self._split_file(split)]
        if (self.root / "boxes.csv").is_file():
            files.append(self.root / "boxes.csv")
        return files + _image_and_mask_files(self, split)

    def boxes(self, image_id: str) -> tuple[Box, ...]:
        """The image's rows of ``boxes.csv`` (``image_id,class,x_min,y_min,x_max,y_max``, inclusive
        pixel coordinates) where the dataset has that file; else none."""
        if self._boxes is None:
            self._boxes = _read_boxes(self.root / "boxes.csv", self.class_names)
        return self._boxes.get(image_id, ())


class Voc2012Dataset:
    """PASCAL VOC 2012 (with the SBD masks converted to SegmentationClassAug for train_aug)."""

    def __init__(self, root: str | Path, name: str = "voc12", label_source: str = "masks"):
        self.root = Path(root)
        self.name = name
        if not self.root.is_dir():
            raise DatasetError(f"dataset {name!r}: VOC2012 folder not found: {self.root}")
        if label_source not in ("masks", "xml"):
            raise DatasetError(f"dataset.label_source must be 'masks' or 'xml', not {label_source!r}")
        self.label_source = label_source
        self.class_names = VOC_CLASSES

    def boxes(self, image_id: str) -> tuple[Box, ...]:
        return ()  # VOC's object boxes (Annotations/) are not read yet

    def source_files(self, split: str) -> list[Path]:
        """Every file the split's manifest is built from (what the workflow tracks for reruns)."""
        files = [self._split_file(split), *_image_and_mask_files(self, split)]
        if self.label_source == "xml":
            files += [self.root / "Annotations" / f"{image_id}.xml" for image_id in self.split_ids(split)]
        return files

    def split_ids(self, split: str) -> list[str]:
        return _read_split_ids(self._split_file(split))

    def _split_file(self, split: str) -> Path:
        for folder in ("Segmentation", "SegmentationAug", "Main"):
            path = self.root / "ImageSets" / folder / f"{split}.txt"
            if path.is_file():
                return path
        raise DatasetError(
            f"dataset {self.name!r}: no split file {split}.txt under {self.root / 'ImageSets'}/"
            "{Segmentation,SegmentationAug,Main}; train_aug comes with the SBD conversion (see README)"
        )

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        for folder in ("SegmentationClassAug", "SegmentationClass"):
            path = self.root / folder / f"{image_id}.png"
            if path.is_file():
                return path
        return None

    def labels(self, image_id: str) -> tuple[int, ...]:
        if self.label_source == "xml":
            path = self.root / "Annotations" / f"{image_id}.xml"
            if not path.is_file():
                raise DatasetError(f"annotation not found for image {image_id!r}: {path}")
            try:
                names = [obj.findtext("name", "").strip() for obj in ET.parse(path).getroot().iter("object")]
            except ET.ParseError as error:
                raise DatasetError(f"annotation {path} is not valid XML: {error}") from error
            unknown = [n for n in names if n not in self.class_names]
            if unknown:
                raise DatasetError(f"annotation {path}: unknown class name(s) {unknown}")
            return tuple(sorted({self.class_names.index(n) for n in names}))
        mask_path = self.mask_path(image_id)
        if mask_path is None:
            raise DatasetError(
                f"image {image_id!r}: no mask in SegmentationClassAug/ or SegmentationClass/ to take "
                "labels from (set dataset.label_source: xml to use Annotations/)"
            )
        mask = read_label_mask(mask_path)
        values = np.unique(mask)
        return tuple(int(v) - 1 for v in values if v not in (0, IGNORE_LABEL))


# Adapters by `dataset.kind`: a factory taking the dataset's config section. The schema's enum of
# dataset.kind equals these names (tests/test_config.py).
DATASET_KINDS: dict[str, Callable[[Mapping[str, Any]], DatasetAdapter]] = {}


def register_kind(kind: str) -> Callable[[Callable[[Mapping[str, Any]], DatasetAdapter]],
                                         Callable[[Mapping[str, Any]], DatasetAdapter]]:
    def register(factory: Callable[[Mapping[str, Any]], DatasetAdapter]) -> Callable[[Mapping[str, Any]], DatasetAdapter]:
        if kind in DATASET_KINDS:
            raise ValueError(f"dataset kind {kind!r} registered twice")
        DATASET_KINDS[kind] = factory
        return factory
    return register


@register_kind("generated")
@register_kind("custom")
def _voc_layout(config: Mapping[str, Any]) -> DatasetAdapter:
    return VocLayoutDataset(config["root"], name=config["name"], labels_csv=config.get("labels_csv"),
                            class_names=config.get("classes"))


@register_kind("voc2012")
def _voc2012(config: Mapping[str, Any]) -> DatasetAdapter:
    return Voc2012Dataset(config["root"], name=config["name"], label_source=config.get("label_source", "masks"))


def open_dataset(config: Mapping[str, Any]) -> DatasetAdapter:
    """The adapter for a `dataset` config section, by its ``kind``."""
    kind = config["kind"]
    if kind not in DATASET_KINDS:
        raise DatasetError(f"dataset.kind must be one of {', '.join(sorted(DATASET_KINDS))}; not {kind!r}")
    return DATASET_KINDS[kind](config)


def build_manifest(dataset: DatasetAdapter, split: str, require_masks: bool,
                   decode: bool = True, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Manifest:
    """Checks every image of a split and returns its manifest.

    All problems are collected and raised together (up to a limit), each naming its file or id, so
    one run shows what to fix. ``decode`` decodes every image in full (damaged or truncated files,
    images above ``max_image_pixels``) and mask (sizes, values), and records the digest of their
    bytes (the manifest's content identity).
    """
    problems: list[str] = []
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
            if mask_path is None and require_masks:
                raise DatasetError(f"image {image_id!r}: no ground-truth mask for split {split!r}")
            height = width = 0
            digest = ""
            if decode:
                image_bytes = image_path.read_bytes()
                height, width = check_image_bytes(image_bytes, image_path, max_image_pixels)
                if mask_path is not None:
                    mask = read_label_mask(mask_path, max_image_pixels)
                    if mask.shape != (height, width):
                        raise DatasetError(f"mask {mask_path} is {mask.shape}, its image is {(height, width)}")
                    bad = sorted(set(np.unique(mask).tolist()) - set(range(num_classes + 1)) - {IGNORE_LABEL})
                    if bad:
                        raise DatasetError(
                            f"mask {mask_path} has values {bad} outside 0..{num_classes} and {IGNORE_LABEL}"
                        )
                digest = content_digest(image_bytes, mask_path.read_bytes() if mask_path else None)
            boxes = dataset.boxes(image_id)
            outside = [b for b in boxes if decode and (b.x_max >= width or b.y_max >= height)]
            if outside:
                raise DatasetError(f"image {image_id!r}: box {tuple(outside[0])[1:]} lies outside the "
                                   f"{width}×{height} image")
            manifest.records.append(ImageRecord(image_id, image_path, mask_path, labels, height, width, boxes,
                                                digest))
        except (DatasetError, ValueError, FileNotFoundError) as error:
            problems.append(str(error))
            if len(problems) >= MAX_LISTED_PROBLEMS:
                problems.append("... (stopped listing)")
                break
    if problems:
        raise DatasetError(f"dataset {dataset.name!r}, split {split!r}: {len(problems)} problem(s):\n  "
                           + "\n  ".join(problems))
    return manifest


