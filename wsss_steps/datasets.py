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
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsss_steps.image_io import IGNORE_LABEL, read_image, read_label_mask

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

_IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_MAX_LISTED_PROBLEMS = 20


class DatasetError(ValueError):
    """Bad dataset content; the message names the file, id or key concerned."""


def validate_image_id(image_id: str, where: str = "") -> str:
    """Returns the id if it is a plain file stem (no path separators, no '..'), else raises."""
    if not _IMAGE_ID.match(image_id) or ".." in image_id:
        origin = f" (in {where})" if where else ""
        raise DatasetError(
            f"invalid image id {image_id!r}{origin}: ids may hold letters, digits, '_', '-', '.' "
            "only, and no path separators or '..'"
        )
    return image_id


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: where its files are and what its image-level labels are."""

    image_id: str
    image_path: Path
    mask_path: Path | None
    labels: tuple[int, ...]  # foreground class indices, 0-based (mask value = index + 1)
    height: int = 0
    width: int = 0


@dataclass
class Manifest:
    """A validated split: class names and one record per image, in split order."""

    dataset: str
    split: str
    class_names: tuple[str, ...]
    records: list[ImageRecord] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ids(self) -> list[str]:
        return [record.image_id for record in self.records]

    def record(self, image_id: str) -> ImageRecord:
        for record in self.records:
            if record.image_id == image_id:
                return record
        raise KeyError(f"image id {image_id!r} is not in split {self.split!r} of {self.dataset!r}")

    def label_vector(self, image_id: str) -> np.ndarray:
        return labels_to_vector(self.record(image_id).labels, self.num_classes)

    def label_matrix(self) -> np.ndarray:
        return np.stack([labels_to_vector(r.labels, self.num_classes) for r in self.records])


def labels_to_vector(labels: Iterable[int], num_classes: int) -> np.ndarray:
    vector = np.zeros(num_classes, dtype=np.float32)
    vector[list(labels)] = 1.0
    return vector


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_split_ids(path: Path) -> list[str]:
    # VOC's classification ImageSets have "id label" lines; the segmentation ones only "id".
    ids = [line.split()[0] for line in _read_lines(path)]
    for image_id in ids:
        validate_image_id(image_id, str(path))
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if duplicates:
        raise DatasetError(f"split file {path} lists ids more than once: {duplicates[:10]}")
    if not ids:
        raise DatasetError(f"split file {path} lists no image")
    return ids


class VocLayoutDataset:
    """The generated dataset and users' own datasets: VOC folders plus classes.txt and labels.csv."""

    def __init__(self, root: str | Path, name: str = "custom", labels_csv: str | Path | None = None,
                 class_names: Sequence[str] | None = None):
        self.root = Path(root)
        self.name = name
        if not self.root.is_dir():
            raise DatasetError(f"dataset {name!r}: root folder not found: {self.root}")
        if class_names is None:
            class_names = _read_lines(self.root / "classes.txt")
        self.class_names = tuple(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise DatasetError(f"dataset {name!r}: class names repeat: {self.class_names}")
        self.labels_csv = Path(labels_csv) if labels_csv else self.root / "labels.csv"
        self._labels: dict[str, tuple[int, ...]] | None = None

    def split_ids(self, split: str) -> list[str]:
        return _read_split_ids(self.root / "ImageSets" / "Segmentation" / f"{split}.txt")

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
                    labels[image_id] = tuple(sorted({index[n] for n in names}))
            self._labels = labels
        return self._labels

    def labels(self, image_id: str) -> tuple[int, ...]:
        labels = self._load_labels()
        if image_id not in labels:
            raise DatasetError(f"image {image_id!r} has no row in {self.labels_csv}")
        return labels[image_id]


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

    def split_ids(self, split: str) -> list[str]:
        for folder in ("Segmentation", "SegmentationAug", "Main"):
            path = self.root / "ImageSets" / folder / f"{split}.txt"
            if path.is_file():
                return _read_split_ids(path)
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


def open_dataset(config: dict) -> VocLayoutDataset | Voc2012Dataset:
    """The adapter for a `dataset` config section (kind: generated, custom or voc2012)."""
    kind = config["kind"]
    name = config["name"]
    if kind in ("generated", "custom"):
        return VocLayoutDataset(config["root"], name=name, labels_csv=config.get("labels_csv"),
                                class_names=config.get("classes"))
    if kind == "voc2012":
        return Voc2012Dataset(config["root"], name=name, label_source=config.get("label_source", "masks"))
    raise DatasetError(f"dataset.kind must be one of generated, custom, voc2012; not {kind!r}")


def build_manifest(dataset: VocLayoutDataset | Voc2012Dataset, split: str, require_masks: bool,
                   decode: bool = True) -> Manifest:
    """Checks every image of a split and returns its manifest.

    All problems are collected and raised together (up to a limit), each naming its file or id, so
    one run shows what to fix. ``decode`` opens every image and mask (sizes, mask values).
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
            if decode:
                height, width = read_image(image_path).shape[:2]
                if mask_path is not None:
                    mask = read_label_mask(mask_path)
                    if mask.shape != (height, width):
                        raise DatasetError(f"mask {mask_path} is {mask.shape}, its image is {(height, width)}")
                    bad = sorted(set(np.unique(mask).tolist()) - set(range(num_classes + 1)) - {IGNORE_LABEL})
                    if bad:
                        raise DatasetError(
                            f"mask {mask_path} has values {bad} outside 0..{num_classes} and {IGNORE_LABEL}"
                        )
            manifest.records.append(ImageRecord(image_id, image_path, mask_path, labels, height, width))
        except (DatasetError, ValueError, FileNotFoundError) as error:
            problems.append(str(error))
            if len(problems) >= _MAX_LISTED_PROBLEMS:
                problems.append("... (stopped listing)")
                break
    if problems:
        raise DatasetError(f"dataset {dataset.name!r}, split {split!r}: {len(problems)} problem(s):\n  "
                           + "\n  ".join(problems))
    return manifest


def write_manifest(manifest: Manifest, directory: str | Path) -> Path:
    """Writes ``classes.txt`` and ``{split}.csv`` into a folder; returns the CSV path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Several split jobs may write classes.txt at once: same content, atomic replace.
    classes_tmp = directory / f".classes.{manifest.split}.tmp"
    classes_tmp.write_text("\n".join(manifest.class_names) + "\n")
    classes_tmp.replace(directory / "classes.txt")
    path = directory / f"{manifest.split}.csv"
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "image", "mask", "labels", "height", "width"])
        for r in manifest.records:
            writer.writerow([r.image_id, str(r.image_path.resolve()),
                             str(r.mask_path.resolve()) if r.mask_path else "",
                             " ".join(manifest.class_names[i] for i in r.labels), r.height, r.width])
    tmp.replace(path)
    return path


def read_manifest(csv_path: str | Path, dataset: str = "") -> Manifest:
    """Reads a manifest written by `write_manifest` (classes.txt beside it)."""
    csv_path = Path(csv_path)
    class_names = tuple(_read_lines(csv_path.parent / "classes.txt"))
    index = {n: i for i, n in enumerate(class_names)}
    manifest = Manifest(dataset or csv_path.parent.parent.name, csv_path.stem, class_names)
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            image_id = validate_image_id(row["image_id"], str(csv_path))
            manifest.records.append(ImageRecord(
                image_id, Path(row["image"]), Path(row["mask"]) if row["mask"] else None,
                tuple(index[n] for n in row["labels"].split()), int(row["height"]), int(row["width"]),
            ))
    if not manifest.records:
        raise DatasetError(f"manifest {csv_path} lists no image")
    return manifest
