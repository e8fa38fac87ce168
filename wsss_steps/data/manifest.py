"""The manifest every step after `prepare_data` reads: one validated record per image of a split.

On disk: ``classes.txt`` (foreground class names, one a line; mask value = line number) and one
``{split}.csv`` per split (``image_id, image, mask, labels, height, width, digest``; a ``boxes``
column only where the dataset has boxes). The adapters (`wsss_steps.data.adapters`) write it.
``digest`` is the sha256 of the image file's and the mask file's bytes: `Manifest.content_digest`
folds every record into the split's identity, so a model or map records which pixels it saw.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wsss_steps.data.images import content_digest

_IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
MAX_LISTED_PROBLEMS = 20


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


class Box(NamedTuple):
    """An object's box: its class index (0-based) and inclusive pixel coordinates."""

    label: int
    x_min: int
    y_min: int
    x_max: int
    y_max: int


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: where its files are and what its image-level labels are."""

    image_id: str
    image_path: Path
    mask_path: Path | None
    labels: tuple[int, ...]  # foreground class indices, 0-based (mask value = index + 1)
    height: int = 0
    width: int = 0
    boxes: tuple[Box, ...] = ()  # where the dataset has boxes (WSOL); several per image allowed
    digest: str = ""  # sha256 of the image and mask files' bytes (`images.content_digest`)


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

    def content_digest(self) -> str:
        """The split's identity: class names and, per image in order, id, labels, boxes and file
        contents. Records without a digest (a manifest from before digests) hash their files now."""
        digest = hashlib.sha256("\t".join(self.class_names).encode())
        for r in self.records:
            content = r.digest or content_digest(r.image_path.read_bytes(),
                                                 r.mask_path.read_bytes() if r.mask_path else None)
            digest.update(f"\n{r.image_id}\t{r.labels}\t{tuple(map(tuple, r.boxes))}\t{content}".encode())
        return digest.hexdigest()

    def label_matrix(self) -> np.ndarray:
        return np.stack([labels_to_vector(r.labels, self.num_classes) for r in self.records])


def labels_to_vector(labels: Iterable[int], num_classes: int) -> np.ndarray:
    vector = np.zeros(num_classes, dtype=np.float32)
    vector[list(labels)] = 1.0
    return vector


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_id_list(path: Path) -> list[str]:
    """The image ids of a split file (one a line; VOC's classification lists add a label after the
    id): each a valid id, none twice, at least one."""
    # VOC's classification ImageSets have "id label" lines; the segmentation ones only "id".
    ids = [line.split()[0] for line in read_lines(path)]
    for image_id in ids:
        validate_image_id(image_id, str(path))
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetError(f"split file {path} lists ids more than once: {duplicates[:10]}")
    if not ids:
        raise DatasetError(f"split file {path} lists no image")
    return ids


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
    with_boxes = any(r.boxes for r in manifest.records)
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "image", "mask", "labels", "height", "width", "digest"]
                        + (["boxes"] if with_boxes else []))
        for r in manifest.records:
            row = [r.image_id, str(r.image_path.resolve()), str(r.mask_path.resolve()) if r.mask_path else "",
                   " ".join(manifest.class_names[i] for i in r.labels), r.height, r.width, r.digest]
            if with_boxes:
                row.append(";".join(f"{manifest.class_names[b.label]} {b.x_min} {b.y_min} {b.x_max} {b.y_max}"
                                    for b in r.boxes))
            writer.writerow(row)
    tmp.replace(path)
    return path


def _parse_boxes(text: str, index: dict[str, int], where: str) -> tuple[Box, ...]:
    boxes = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, *coords = item.split()
        if name not in index or len(coords) != 4:
            raise DatasetError(f"{where}: bad box {item!r} (need 'class x_min y_min x_max y_max')")
        boxes.append(Box(index[name], *(int(c) for c in coords)))
    return tuple(boxes)


def read_manifest(csv_path: str | Path, dataset: str = "") -> Manifest:
    """Reads a manifest written by `write_manifest` (classes.txt beside it)."""
    csv_path = Path(csv_path)
    class_names = tuple(read_lines(csv_path.parent / "classes.txt"))
    index = {n: i for i, n in enumerate(class_names)}
    manifest = Manifest(dataset or csv_path.parent.parent.name, csv_path.stem, class_names)
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            image_id = validate_image_id(row["image_id"], str(csv_path))
            manifest.records.append(ImageRecord(
                image_id, Path(row["image"]), Path(row["mask"]) if row["mask"] else None,
                tuple(index[n] for n in row["labels"].split()), int(row["height"]), int(row["width"]),
                _parse_boxes(row.get("boxes") or "", index, f"{csv_path} ({image_id})"), row.get("digest") or "",
            ))
    if not manifest.records:
        raise DatasetError(f"manifest {csv_path} lists no image")
    return manifest


def spread_ids(ids: Sequence[str], count: int) -> list[str]:
    """``count`` ids spread evenly over a split, in split order (deterministic): the report's gallery."""
    if not ids:
        raise DatasetError("the split has no image")
    positions = np.linspace(0, len(ids) - 1, min(count, len(ids))).round().astype(int)
    return [ids[p] for p in dict.fromkeys(positions.tolist())]
