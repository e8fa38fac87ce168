"""The manifest every step after `prepare_data` reads: one validated record per image of a split.

On disk: ``classes.txt`` (foreground class names, one a line; mask value = line number) and one
``{split}.csv`` per split (``image_id, image, mask, label_ids, label_names, height, width, digest``;
a ``boxes`` column only where the dataset has boxes). Labels and boxes name classes by their 0-based
index (``label_ids`` "0 14", boxes "14 x_min y_min x_max y_max;…"): COCO's names hold spaces
("traffic light"), so a name is never parsed back; ``label_names`` ("person|traffic light") is for
people reading the file. `wsss_steps.data.manifest_builder` builds it from a dataset's adapter
(`wsss_steps.data.adapters`).
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


BACKGROUND_NAMES = ("background", "_background_", "__background__", "bg")


def check_class_names(names: Sequence[str], where: str) -> tuple[str, ...]:
    """Foreground class names as a dataset lists them (mask value = position + 1): none empty,
    none twice, no background entry (it would shift every class index by one), none holding ';'
    or '|' (labels.csv and the manifest's label_names separate names with them)."""
    names = tuple(name.strip() for name in names)
    problems = []
    if any(not name for name in names):
        problems.append("an empty class name")
    if names and names[0].lower() in BACKGROUND_NAMES:
        problems.append(f"the first class is {names[0]!r}: list foreground classes only (mask value 0 is the "
                        "background; a background line shifts every class index by one)")
    elif any(name.lower() in BACKGROUND_NAMES for name in names):
        problems.append(f"a class is named background ({[n for n in names if n.lower() in BACKGROUND_NAMES]}); "
                        "mask value 0 is the background")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        problems.append(f"class names repeat: {repeated}")
    separators = [name for name in names if ";" in name or "|" in name]
    if separators:
        problems.append(f"class names may not hold ';' or '|': {separators}")
    if problems:
        raise DatasetError(f"{where}: " + "; ".join(problems))
    return names


class Box(NamedTuple):
    """An object's box: its class index (0-based) and inclusive pixel coordinates."""

    label: int
    x_min: int
    y_min: int
    x_max: int
    y_max: int


def check_box(box: Box, where: str) -> Box:
    """The box if its inclusive pixel coordinates make a box (0 <= x_min <= x_max, 0 <= y_min <= y_max),
    else a DatasetError naming ``where`` (the file and line, or the image). Every adapter's boxes
    pass here (`build_manifest`); whether the box lies inside its image is checked there."""
    problems = []
    if box.x_min < 0 or box.y_min < 0:
        problems.append("negative coordinates")
    if box.x_min > box.x_max:
        problems.append(f"x_min {box.x_min} > x_max {box.x_max}")
    if box.y_min > box.y_max:
        problems.append(f"y_min {box.y_min} > y_max {box.y_max}")
    if problems:
        raise DatasetError(f"{where}: box {tuple(box)[1:]} (x_min, y_min, x_max, y_max) has "
                           f"{' and '.join(problems)}; need 0 <= x_min <= x_max and 0 <= y_min <= y_max")
    return box


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
    # VOC's classification ImageSets have "id label" lines (label -1, 0 or 1); the segmentation
    # ones only "id". Anything else is refused, so that "my photo 7" is not read as the id "my".
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    ids = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) > 2 or (len(tokens) == 2 and tokens[1] not in ("-1", "0", "1")):
            raise DatasetError(f"split file {path} line {line_number}: {line.strip()!r} is not 'id' or 'id label' "
                               "(label -1, 0 or 1): image ids cannot hold spaces")
        ids.append(tokens[0])
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
        writer.writerow(["image_id", "image", "mask", "label_ids", "label_names", "height", "width", "digest"]
                        + (["boxes"] if with_boxes else []))
        for r in manifest.records:
            row = [r.image_id, str(r.image_path.resolve()), str(r.mask_path.resolve()) if r.mask_path else "",
                   " ".join(map(str, r.labels)), "|".join(manifest.class_names[i] for i in r.labels),
                   r.height, r.width, r.digest]
            if with_boxes:
                row.append(";".join(f"{b.label} {b.x_min} {b.y_min} {b.x_max} {b.y_max}" for b in r.boxes))
            writer.writerow(row)
    tmp.replace(path)
    return path


def _class_indices(text: str, num_classes: int, where: str) -> tuple[int, ...]:
    try:
        indices = tuple(int(token) for token in text.split())
    except ValueError as error:
        raise DatasetError(f"{where}: label_ids must be class indices ({error})") from error
    outside = [i for i in indices if not 0 <= i < num_classes]
    if outside:
        raise DatasetError(f"{where}: class indices {outside} outside 0..{num_classes - 1} (classes.txt)")
    return indices


def _parse_boxes(text: str, num_classes: int, where: str) -> tuple[Box, ...]:
    boxes = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        fields = item.split()
        if len(fields) != 5:
            raise DatasetError(f"{where}: bad box {item!r} (need 'class_index x_min y_min x_max y_max')")
        (label,) = _class_indices(fields[0], num_classes, where)
        try:
            boxes.append(Box(label, *(int(c) for c in fields[1:])))
        except ValueError as error:
            raise DatasetError(f"{where}: bad box {item!r} ({error})") from error
    return tuple(boxes)


def _legacy_labels(row: dict[str, str], class_names: tuple[str, ...], where: str) -> tuple[tuple[int, ...], str]:
    """A manifest written before class indices (``labels`` and boxes by space-separated class
    names): readable while no class name holds a space, refused otherwise (names would split)."""
    spaced = [name for name in class_names if len(name.split()) != 1]
    if spaced:
        raise DatasetError(f"{where}: written by an older version that named classes with spaces ambiguously "
                           f"({spaced[:3]}); delete it and rerun prepare_data")
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [n for n in row["labels"].split() if n not in index]
    if unknown:
        raise DatasetError(f"{where}: unknown class name(s) {unknown}; delete the manifest and rerun prepare_data")
    labels = tuple(index[n] for n in row["labels"].split())
    boxes = []
    for item in filter(None, (part.strip() for part in (row.get("boxes") or "").split(";"))):
        name, *coords = item.split()
        if name not in index:
            raise DatasetError(f"{where}: bad box {item!r}; delete the manifest and rerun prepare_data")
        boxes.append(" ".join([str(index[name]), *coords]))
    return labels, ";".join(boxes)


def read_manifest(csv_path: str | Path, dataset: str = "") -> Manifest:
    """Reads a manifest written by `write_manifest` (classes.txt beside it)."""
    csv_path = Path(csv_path)
    class_names = tuple(read_lines(csv_path.parent / "classes.txt"))
    manifest = Manifest(dataset or csv_path.parent.parent.name, csv_path.stem, class_names)
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            image_id = validate_image_id(row["image_id"], str(csv_path))
            where = f"{csv_path} ({image_id})"
            if "label_ids" in row:
                labels = _class_indices(row["label_ids"], len(class_names), where)
                box_text = row.get("boxes") or ""
            else:
                labels, box_text = _legacy_labels(row, class_names, where)
            manifest.records.append(ImageRecord(
                image_id, Path(row["image"]), Path(row["mask"]) if row["mask"] else None,
                labels, int(row["height"]), int(row["width"]),
                _parse_boxes(box_text, len(class_names), where), row.get("digest") or "",
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
