"""Dataset adapters: one on-disk layout each, registered by ``dataset.kind`` (`open_dataset`).

`prepare_data` turns any of them into a validated manifest (`classes.txt` + one `{split}.csv` per
split; `wsss_steps.data.manifest_builder`) so no other step parses dataset layouts.

Layouts:
- ``voc_layout`` (the generated dataset and a user's own): ``JPEGImages/{id}.jpg``,
  ``SegmentationClass/{id}.png`` (optional per image), ``ImageSets/Segmentation/{split}.txt``,
  ``classes.txt`` (foreground class names, one a line, mask value = line number) and
  ``labels.csv`` (columns ``image_id,labels``; labels are class names separated by spaces, or by
  ';' where a class name holds a space).
- ``voc2012``: a ``VOCdevkit/VOC2012`` folder; masks from ``SegmentationClassAug/`` (SBD converted,
  as IRN and AdvCAM use) or ``SegmentationClass/``; image-level labels from the masks (as IRN's
  ``make_cls_labels``) or from ``Annotations/*.xml``.
- ``coco``: MS COCO (2014 as the papers): ``annotations/instances_{split}.json`` and ``{split}/``
  images; masks rasterised from the instances with pycocotools (`CocoDataset`).
- ``cub``: CUB-200-2011 as distributed (``images.txt``, ``image_class_labels.txt``,
  ``train_test_split.txt``, ``bounding_boxes.txt``, ``classes.txt``, ``images/``, optional
  ``segmentations/``); splits ``train`` and ``test``; one class and one box per image.

An adapter whose masks are not label PNGs (CUB's soft segmentations, COCO's polygons) has
``converts_masks`` and a ``label_mask(image_id)``: `manifest_builder.build_manifest` writes the
converted masks once under its ``mask_dir`` (the dataset's results, never the user's data folder)
and records those files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wsss_steps.data.images import IGNORE_LABEL, read_label_mask
from wsss_steps.data.manifest import (
    Box,
    DatasetError,
    check_box,
    check_class_names,
    read_id_list,
    read_lines,
    validate_image_id,
)

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


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
            box = check_box(Box(index[row["class"]], x_min, y_min, x_max, y_max), f"{where} (image {image_id!r})")
            boxes.setdefault(image_id, []).append(box)
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


def split_label_names(text: str) -> list[str]:
    """The class names of a labels.csv cell: separated by ';' where the cell has one (names with
    spaces, as COCO's "traffic light"), else by whitespace."""
    if ";" in text:
        return [name.strip() for name in text.split(";") if name.strip()]
    return text.split()


class VocLayoutDataset:
    """The generated dataset and users' own datasets: VOC folders plus classes.txt and labels.csv."""

    labels_independent_of_masks = True  # labels.csv: checked against the masks by build_manifest

    def __init__(self, root: str | Path, name: str = "custom", labels_csv: str | Path | None = None,
                 class_names: Sequence[str] | None = None):
        self.root = Path(root)
        self.name = name
        if not self.root.is_dir():
            raise DatasetError(f"dataset {name!r}: root folder not found: {self.root}")
        voc_folders = [f"{folder}/" for folder in ("Annotations", "SegmentationClassAug")
                       if (self.root / folder).is_dir()]
        if class_names is None and not (self.root / "classes.txt").is_file() and voc_folders:
            raise DatasetError(f"dataset {name!r}: {self.root} has no classes.txt and looks like a VOC2012 folder "
                               f"({', '.join(voc_folders)}): use dataset.kind: voc2012")
        if class_names is None:
            class_names = read_lines(self.root / "classes.txt")
        self.class_names = check_class_names(class_names, str(self.root / "classes.txt"))
        self.labels_csv = Path(labels_csv) if labels_csv else self.root / "labels.csv"
        self._labels: dict[str, tuple[int, ...]] | None = None
        self._labels_error: DatasetError | None = None
        self._boxes: dict[str, tuple[Box, ...]] | None = None

    def split_ids(self, split: str) -> list[str]:
        return read_id_list(self._split_file(split))

    def _split_file(self, split: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{split}.txt"

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        path = self.root / "SegmentationClass" / f"{image_id}.png"
        return path if path.is_file() else None

    def _load_labels(self) -> dict[str, tuple[int, ...]]:
        if self._labels_error is not None:  # a bad file is read once, not again for every image
            raise self._labels_error
        try:
            return self._read_labels()
        except DatasetError as error:
            self._labels_error = error
            raise

    def _read_labels(self) -> dict[str, tuple[int, ...]]:
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
                    names = split_label_names(row["labels"] or "")
                    unknown = [n for n in names if n not in index]
                    if unknown:
                        spaced = " (separate names with ';' where a class name holds a space)" if any(
                            " " in name for name in self.class_names) else ""
                        raise DatasetError(
                            f"{self.labels_csv} line {line_number}: image {image_id!r} has unknown class "
                            f"name(s) {unknown}; known classes: {list(self.class_names)}{spaced}"
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
        pixel coordinates) where the dataset has that file; else none. Rows of ids that no split
        file lists are said once (a typo in an id would otherwise lose its boxes silently)."""
        if self._boxes is None:
            self._boxes = _read_boxes(self.root / "boxes.csv", self.class_names)
            split_files = sorted((self.root / "ImageSets" / "Segmentation").glob("*.txt"))
            listed = {line.split()[0] for path in split_files for line in read_lines(path)}
            orphans = sorted(set(self._boxes) - listed)
            if orphans and split_files:
                log.warning("%s: %d image id(s) with boxes are in no split file of %s (their boxes are not "
                            "used): %s%s", self.root / "boxes.csv", len(orphans), split_files[0].parent,
                            " ".join(orphans[:10]), " ..." if len(orphans) > 10 else "")
        return self._boxes.get(image_id, ())


class Voc2012Dataset:
    """PASCAL VOC 2012 (with the SBD masks converted to SegmentationClassAug for train_aug)."""

    def __init__(self, root: str | Path, name: str = "voc12", label_source: str = "masks"):
        self.root = Path(root)
        self.name = name
        if not self.root.is_dir():
            raise DatasetError(f"dataset {name!r}: VOC2012 folder not found: {self.root}")
        custom_files = [file for file in ("classes.txt", "labels.csv") if (self.root / file).is_file()]
        if custom_files:  # a VOC2012 folder has neither; kind voc2012 would label it with VOC's 20 classes
            raise DatasetError(f"dataset {name!r}: {self.root} looks like a custom layout ({', '.join(custom_files)}), "
                               "not a VOC2012 folder: use dataset.kind: custom")
        if label_source not in ("masks", "xml"):
            raise DatasetError(f"dataset.label_source must be 'masks' or 'xml', not {label_source!r}")
        self.label_source = label_source
        self.labels_independent_of_masks = label_source == "xml"
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
        return read_id_list(self._split_file(split))

    def _split_file(self, split: str) -> Path:
        for folder in ("Segmentation", "SegmentationAug", "Main"):
            path = self.root / "ImageSets" / folder / f"{split}.txt"
            if path.is_file():
                return path
        raise DatasetError(
            f"dataset {self.name!r}: no split file {split}.txt under {self.root / 'ImageSets'}/"
            "{Segmentation,SegmentationAug,Main}; train_aug comes with the SBD conversion (see docs/voc.md)"
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


class CubDataset:
    """CUB-200-2011 in its official layout (WSOL: one bird, one class, one box per image).

    Ids are the image files' stems (unique in CUB). Boxes: ``bounding_boxes.txt`` gives x, y,
    width, height in pixels; the inclusive box is (x, y, x + width − 1, y + height − 1), rounded and
    clipped to the image. Masks, where ``segmentations/`` exists: the averaged annotations (grey
    0–255) as foreground where above 127 (most annotators), written as label PNGs (class + 1).
    """

    converts_masks = True
    SPLITS = {"train": "1", "test": "0"}
    # The files of the official layout, and the fields of their lines.
    FILES = {"classes.txt": "class_id class_name", "images.txt": "image_id path",
             "image_class_labels.txt": "image_id class_id", "train_test_split.txt": "image_id is_training",
             "bounding_boxes.txt": "image_id x y width height"}

    def __init__(self, root: str | Path, name: str = "cub"):
        self.root = Path(root)
        self.name = name
        if not self.root.is_dir():
            raise DatasetError(f"dataset {name!r}: CUB-200-2011 folder not found: {self.root}")
        missing = [f for f in self.FILES if not (self.root / f).is_file()]
        missing += [] if (self.root / "images").is_dir() else ["images/"]
        if missing:
            raise DatasetError(f"dataset {name!r}: {self.root} is not a CUB-200-2011 folder: it lacks "
                               f"{', '.join(missing)} (CUB-200-2011 has {', '.join(self.FILES)} and images/)")
        self.class_names = tuple(fields[1].split(".", 1)[-1] for _, fields in self._rows("classes.txt", maxsplit=1))
        self._ids: dict[str, str] = {}  # CUB's numeric id → our id (the file stem)
        self._paths: dict[str, str] = {}
        for line_number, (number, relative) in self._rows("images.txt"):
            image_id = validate_image_id(Path(relative).stem, f"{self.root / 'images.txt'} line {line_number}")
            if image_id in self._paths:
                raise DatasetError(f"{self.root / 'images.txt'} line {line_number}: two images named {image_id!r}")
            self._ids[number], self._paths[image_id] = image_id, relative
        self._labels: dict[str, int] = {}
        for line_number, (number, class_id) in self._image_rows("image_class_labels.txt"):
            if not class_id.isdigit():
                raise DatasetError(f"{self.root / 'image_class_labels.txt'} line {line_number}: image {number}: "
                                   f"class id {class_id!r} is not a whole number")
            self._labels[self._ids[number]] = int(class_id) - 1
        self._split = {self._ids[n]: flag for _, (n, flag) in self._image_rows("train_test_split.txt")}
        self._boxes: dict[str, tuple[float, ...]] = {}
        where = self.root / "bounding_boxes.txt"
        for line_number, (number, *values) in self._image_rows("bounding_boxes.txt"):
            image_id = self._ids[number]
            try:
                x, y, width, height = (float(v) for v in values)
            except ValueError as error:
                raise DatasetError(f"{where} line {line_number}: image {number} ({image_id!r}): box values must be "
                                   f"numbers ({error})") from error
            if width <= 0 or height <= 0:
                raise DatasetError(f"{where} line {line_number}: image {number} ({image_id!r}) has a box of width "
                                   f"{width:g} and height {height:g}; both must be > 0")
            self._boxes[image_id] = (x, y, width, height)
        bad = [i for i, c in self._labels.items() if not 0 <= c < len(self.class_names)]
        if bad:
            raise DatasetError(f"{self.root / 'image_class_labels.txt'}: class ids outside 1..{len(self.class_names)} "
                               f"for {bad[:5]}")

    def _rows(self, name: str, maxsplit: int = -1) -> list[tuple[int, list[str]]]:
        """(line number, fields) of each line of one of the layout's files, checked for its field
        count and for ids given twice: another layout's file of that name is named as such."""
        path, form = self.root / name, self.FILES[name]
        rows: list[tuple[int, list[str]]] = []
        first_line: dict[str, int] = {}
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=maxsplit)
            if len(fields) != len(form.split()):
                raise DatasetError(f"{path} line {line_number}: {line.strip()!r} is not '{form}': "
                                   f"{self.root} is not a CUB-200-2011 folder (or its {name} is damaged)")
            if fields[0] in first_line:
                raise DatasetError(f"{path} line {line_number}: id {fields[0]!r} again (first on line "
                                   f"{first_line[fields[0]]})")
            first_line[fields[0]] = line_number
            rows.append((line_number, fields))
        if not rows:
            raise DatasetError(f"{path} is empty: {self.root} is not a CUB-200-2011 folder")
        return rows

    def _image_rows(self, name: str) -> list[tuple[int, list[str]]]:
        """`_rows` of a file keyed by the image ids of images.txt: an id it lacks is named, with its line."""
        rows = self._rows(name)
        unknown = [(line_number, fields[0]) for line_number, fields in rows if fields[0] not in self._ids]
        if unknown:
            raise DatasetError(f"{self.root / name}: image ids {[n for _, n in unknown[:5]]} are not in images.txt "
                               f"(the first on line {unknown[0][0]})")
        return rows

    def split_ids(self, split: str) -> list[str]:
        if split not in self.SPLITS:
            raise DatasetError(f"dataset {self.name!r} (CUB): splits are {', '.join(self.SPLITS)}, not {split!r}")
        ids = [i for i in self._paths if self._split.get(i) == self.SPLITS[split]]
        if not ids:
            raise DatasetError(f"dataset {self.name!r}: no image of split {split!r} in train_test_split.txt")
        return ids

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / self._paths[image_id]

    def mask_path(self, image_id: str) -> Path | None:
        path = (self.root / "segmentations" / self._paths[image_id]).with_suffix(".png")
        return path if path.is_file() else None

    def label_mask(self, image_id: str) -> np.ndarray | None:
        path = self.mask_path(image_id)
        if path is None:
            return None
        grey = read_label_mask(path)
        return np.where(grey > 127, self._labels[image_id] + 1, 0).astype(np.uint8)

    def labels(self, image_id: str) -> tuple[int, ...]:
        if image_id not in self._labels:
            raise DatasetError(f"image {image_id!r} has no line in {self.root / 'image_class_labels.txt'}")
        return (self._labels[image_id],)

    def boxes(self, image_id: str) -> tuple[Box, ...]:
        if image_id not in self._boxes:
            return ()
        x, y, width, height = self._boxes[image_id]
        x_min, y_min = round(x), round(y)  # a box under a pixel wide or high keeps one pixel
        box = Box(self._labels[image_id], x_min, y_min, max(x_min, round(x + width) - 1),
                  max(y_min, round(y + height) - 1))
        return (check_box(box, f"{self.root / 'bounding_boxes.txt'} (image {image_id!r})"),)

    def source_files(self, split: str) -> list[Path]:
        files = [self.root / name for name in ("classes.txt", "images.txt", "image_class_labels.txt",
                                                "train_test_split.txt", "bounding_boxes.txt")]
        return files + _image_and_mask_files(self, split)


class CocoDataset:
    """MS COCO in its official layout, read with pycocotools: ``annotations/instances_{split}.json``
    and the images in ``{split}/`` (splits are the folder names: ``train2014``, ``val2014``, …).

    Classes: the annotation file's categories in the official order (by category id; 80 for
    COCO), mask value = index + 1. Image-level labels: the categories of the image's instances,
    crowd ones included (the object is in the picture). Semantic masks are rasterised once by
    `build_manifest` into its ``mask_dir`` (the dataset's results): every annotation in the file's
    order, a later one over an earlier one where they overlap (the order the usual COCO → VOC
    conversions draw in), non-crowd instances as their class, crowd regions (``iscrowd: 1``, RLE)
    as 255 (ignored). Images without any annotation have no label: they are left out of the split,
    and `left_out` lists them (prepare_data logs their count and ids). Boxes: each non-crowd
    instance's ``bbox`` (x, y, width, height) as inclusive pixels.
    """

    converts_masks = True

    def __init__(self, root: str | Path, name: str = "coco"):
        self.root = Path(root)
        self.name = name
        if not self.root.is_dir():
            raise DatasetError(f"dataset {name!r}: COCO folder not found: {self.root}")
        self._splits: dict[str, Any] = {}  # split → its pycocotools COCO index
        self._image_split: dict[str, str] = {}
        self._class_names: tuple[str, ...] | None = None
        self._category_index: dict[int, int] = {}
        self.left_out: dict[str, list[str]] = {}  # split → ids of images without any annotation

    def annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def _index(self, split: str) -> Any:
        if split not in self._splits:
            from pycocotools.coco import COCO  # noqa: PLC0415 (a heavy import, only for COCO datasets)

            path = self.annotation_file(split)
            if not path.is_file():
                raise DatasetError(f"dataset {self.name!r}: annotation file not found: {path}")
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
                    coco = COCO(str(path))
            except (ValueError, KeyError, TypeError, AssertionError) as error:
                raise DatasetError(f"{path}: not a COCO instances file ({type(error).__name__}: {error})") from error
            missing = [key for key in ("images", "annotations", "categories") if key not in coco.dataset]
            if missing:
                raise DatasetError(f"{path}: not a COCO instances file (no {', '.join(missing)})")
            categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
            orphans = sorted(a["id"] for a in coco.anns.values() if a.get("image_id") not in coco.imgs)
            if orphans:
                raise DatasetError(f"{path}: {len(orphans)} annotation(s) name an image_id that 'images' lacks "
                                   f"(annotation ids {orphans[:10]}); their objects would be lost silently")
            unknown = sorted({a["category_id"] for a in coco.anns.values()} - {c["id"] for c in categories})
            if unknown:
                raise DatasetError(f"{path}: annotations name category ids {unknown[:10]} that 'categories' lacks")
            names = check_class_names([c["name"] for c in categories], f"{path} (categories)")
            if self._class_names is None:
                self._class_names = names
                self._category_index = {c["id"]: i for i, c in enumerate(categories)}
            elif names != self._class_names:
                raise DatasetError(f"{path}: categories differ from the other split's ({len(names)} vs "
                                   f"{len(self._class_names)} classes); both must list COCO's categories")
            ids, left_out = [], []
            for info in sorted(coco.loadImgs(coco.getImgIds()), key=lambda i: i["id"]):
                file_name = str(info.get("file_name", ""))
                if Path(file_name).name != file_name or not file_name:
                    raise DatasetError(f"{path}: image {info.get('id')!r} has file_name {file_name!r}; "
                                       f"a plain file name in {split}/ is expected (no folders, no '..')")
                image_id = validate_image_id(Path(file_name).stem, str(path))
                if image_id in self._image_split:
                    raise DatasetError(f"{path}: image {image_id!r} is listed twice (or also in another split)")
                self._image_split[image_id] = split
                (ids if coco.getAnnIds(imgIds=info["id"]) else left_out).append(image_id)
            self._splits[split] = (coco, ids, {Path(i["file_name"]).stem: i for i in coco.imgs.values()})
            self.left_out[split] = left_out
        return self._splits[split]

    @property
    def class_names(self) -> tuple[str, ...]:
        if self._class_names is None:
            for split in ("train2014", "val2014", "train2017", "val2017"):
                if self.annotation_file(split).is_file():
                    self._index(split)
                    break
            else:
                found = sorted(p.name for p in (self.root / "annotations").glob("instances_*.json"))
                if not found:
                    raise DatasetError(f"dataset {self.name!r}: no annotations/instances_*.json under {self.root}")
                self._index(found[0][len("instances_"):-len(".json")])
        assert self._class_names is not None
        return self._class_names

    def _info(self, image_id: str) -> tuple[Any, dict[str, Any]]:
        split = self._image_split.get(image_id)
        if split is None:
            raise DatasetError(f"image {image_id!r} is in no loaded COCO annotation file")
        coco, _, infos = self._splits[split]
        return coco, infos[image_id]

    def _annotations(self, image_id: str) -> list[dict[str, Any]]:
        coco, info = self._info(image_id)
        return coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))

    def split_ids(self, split: str) -> list[str]:
        _, ids, _ = self._index(split)
        if not ids:
            raise DatasetError(f"dataset {self.name!r}: no annotated image in {self.annotation_file(split)}")
        return list(ids)

    def image_path(self, image_id: str) -> Path:
        _, info = self._info(image_id)
        return self.root / self._image_split[image_id] / info["file_name"]

    def mask_path(self, image_id: str) -> Path | None:
        """Where the image's mask comes from: its split's annotation file (rasterised by label_mask)."""
        return self.annotation_file(self._image_split[image_id])

    def label_mask(self, image_id: str) -> np.ndarray:
        coco, info = self._info(image_id)
        mask = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        for annotation in self._annotations(image_id):
            if annotation.get("segmentation") is None:
                continue
            value = IGNORE_LABEL if annotation.get("iscrowd") else self._category_index[annotation["category_id"]] + 1
            mask[coco.annToMask(annotation) > 0] = value
        return mask

    def labels(self, image_id: str) -> tuple[int, ...]:
        return tuple(sorted({self._category_index[a["category_id"]] for a in self._annotations(image_id)}))

    def boxes(self, image_id: str) -> tuple[Box, ...]:
        boxes = []
        for annotation in self._annotations(image_id):
            if annotation.get("iscrowd") or not annotation.get("bbox"):
                continue
            x, y, width, height = annotation["bbox"]
            boxes.append(Box(self._category_index[annotation["category_id"]], max(0, round(x)), max(0, round(y)),
                             max(0, round(x + width) - 1), max(0, round(y + height) - 1)))
        return tuple(boxes)

    def source_files(self, split: str) -> list[Path]:
        return [self.annotation_file(split), *(self.image_path(i) for i in self.split_ids(split))]


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


@register_kind("cub")
def _cub(config: Mapping[str, Any]) -> DatasetAdapter:
    return CubDataset(config["root"], name=config["name"])


@register_kind("coco")
def _coco(config: Mapping[str, Any]) -> DatasetAdapter:
    return CocoDataset(config["root"], name=config["name"])


@register_kind("voc2012")
def _voc2012(config: Mapping[str, Any]) -> DatasetAdapter:
    return Voc2012Dataset(config["root"], name=config["name"], label_source=config.get("label_source", "masks"))


def open_dataset(config: Mapping[str, Any]) -> DatasetAdapter:
    """The adapter for a `dataset` config section, by its ``kind``."""
    kind = config["kind"]
    if kind not in DATASET_KINDS:
        raise DatasetError(f"dataset.kind must be one of {', '.join(sorted(DATASET_KINDS))}; not {kind!r}")
    return DATASET_KINDS[kind](config)
