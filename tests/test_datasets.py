"""Dataset adapters and manifest: layouts read right, bad data named before any compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_steps.data.adapters import Voc2012Dataset, VocLayoutDataset, build_manifest
from wsss_steps.data.images import read_label_mask, write_image, write_label_mask
from wsss_steps.data.manifest import DatasetError, read_manifest, validate_image_id, write_manifest
from wsss_steps.prepare_data import main as prepare_data_main


def make_voc_layout(root: Path, labels: dict[str, str], classes=("cat", "dog"), size=(20, 24)) -> Path:
    """A VOC-layout tree: one image per id, a mask whose values follow its labels."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    rows = ["image_id,labels"]
    rng = np.random.default_rng(0)
    for image_id, names in labels.items():
        write_image(root / "JPEGImages" / f"{image_id}.jpg", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        mask = np.zeros(size, np.uint8)
        for k, name in enumerate(names.split()):
            mask[k * 4:(k + 1) * 4, :] = classes.index(name) + 1
        mask[-1, :] = 255
        write_label_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
        rows.append(f"{image_id},{names}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(labels) + "\n")
    return root


def test_manifest_round_trip(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog cat", "a3": "dog"})
    manifest = build_manifest(VocLayoutDataset(root, name="toy"), "train", require_masks=True)
    assert manifest.ids == ["a1", "a2", "a3"]
    assert [r.labels for r in manifest.records] == [(0,), (0, 1), (1,)]
    assert (manifest.records[0].height, manifest.records[0].width) == (20, 24)
    np.testing.assert_array_equal(manifest.label_matrix(), [[1, 0], [1, 1], [0, 1]])
    path = write_manifest(manifest, tmp_path / "out")
    again = read_manifest(path)
    assert again.records == manifest.records and again.class_names == ("cat", "dog")


@pytest.mark.parametrize("bad_id", ["../etc/passwd", "a/b", "..", ".hidden", "x y", ""])
def test_image_ids_with_path_parts_are_refused(bad_id: str) -> None:
    with pytest.raises(DatasetError, match="invalid image id"):
        validate_image_id(bad_id)


def test_bad_data_is_named(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"ok": "cat", "nolabel": "cat", "badmask": "dog",
                                              "broken": "cat", "gone": "dog"})
    (root / "labels.csv").write_text(
        "image_id,labels\nok,cat\nnolabel,\nbadmask,dog\nbroken,cat\ngone,dog\n")
    write_label_mask(root / "SegmentationClass" / "badmask.png", np.full((20, 24), 7, np.uint8))
    (root / "JPEGImages" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "JPEGImages" / "gone.jpg").unlink()
    with pytest.raises(DatasetError) as error:
        build_manifest(VocLayoutDataset(root), "train", require_masks=True)
    message = str(error.value)
    assert "4 problem(s)" in message
    assert "'nolabel'" in message and "no image-level label" in message
    assert "badmask.png has values [7] outside 0..2" in message
    assert "broken.jpg (not an image format PIL reads)" in message and "could not be decoded" in message
    assert "gone.jpg" in message and "not found" in message


def test_unknown_class_name_and_traversal_id_in_labels(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat"})
    (root / "labels.csv").write_text("image_id,labels\na1,cat horse\n")
    with pytest.raises(DatasetError, match=r"line 2: image 'a1' has unknown class name\(s\) \['horse'\]"):
        build_manifest(VocLayoutDataset(root), "train", require_masks=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("../a1\n")
    with pytest.raises(DatasetError, match=r"invalid image id '../a1' \(in .*train.txt\)"):
        VocLayoutDataset(root).split_ids("train")


def test_missing_mask_is_an_error_only_when_required(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog"})
    (root / "SegmentationClass" / "a2.png").unlink()
    assert build_manifest(VocLayoutDataset(root), "train", require_masks=False).records[1].mask_path is None
    with pytest.raises(DatasetError, match="'a2': no ground-truth mask"):
        build_manifest(VocLayoutDataset(root), "train", require_masks=True)


def test_voc2012_labels_from_masks_and_xml(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("2007_000032\n2007_000039\n")
    (root / "Annotations").mkdir()
    for image_id, values in (("2007_000032", (1, 15)), ("2007_000039", (20,))):
        write_image(root / "JPEGImages" / f"{image_id}.jpg", np.zeros((8, 10, 3), np.uint8))
        mask = np.zeros((8, 10), np.uint8)
        for k, value in enumerate(values):
            mask[k, :] = value
        mask[-1] = 255
        write_label_mask(root / "SegmentationClassAug" / f"{image_id}.png", mask)
        names = {1: "aeroplane", 15: "person", 20: "tvmonitor"}
        objects = "".join(f"<object><name>{names[v]}</name></object>" for v in values)
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objects}</annotation>")
    from_masks = build_manifest(Voc2012Dataset(root), "train_aug", require_masks=True)
    from_xml = build_manifest(Voc2012Dataset(root, label_source="xml"), "train_aug", require_masks=True)
    assert [r.labels for r in from_masks.records] == [(0, 14), (19,)]
    assert [r.labels for r in from_xml.records] == [(0, 14), (19,)]
    with pytest.raises(DatasetError, match="no split file val.txt"):
        Voc2012Dataset(root).split_ids("val")


def test_prepare_data_cli_writes_manifest(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog"})
    prepare_data_main(["--kind", "custom", "--root", str(root), "--name", "toy", "--split", "train",
                       "--out-dir", str(tmp_path / "data"), "--require-masks"])
    assert (tmp_path / "data" / "classes.txt").read_text() == "cat\ndog\n"
    assert read_manifest(tmp_path / "data" / "train.csv").ids == ["a1", "a2"]


def test_boxes_reach_the_manifest_and_bad_rows_are_named(tmp_path: Path) -> None:
    from wsss_steps.data.manifest import Box

    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog cat"})
    (root / "boxes.csv").write_text("image_id,class,x_min,y_min,x_max,y_max\n"
                                    "a2,dog,0,4,23,7\na2,cat,1,0,10,3\na1,cat,0,0,23,19\n")
    manifest = build_manifest(VocLayoutDataset(root, name="toy"), "train", require_masks=True)
    assert manifest.records[1].boxes == (Box(1, 0, 4, 23, 7), Box(0, 1, 0, 10, 3))
    again = read_manifest(write_manifest(manifest, tmp_path / "data"))
    assert [r.boxes for r in again.records] == [r.boxes for r in manifest.records]
    (root / "boxes.csv").write_text("image_id,class,x_min,y_min,x_max,y_max\na1,cat,0,0,24,19\n")
    with pytest.raises(DatasetError, match=r"image 'a1': box \(0, 0, 24, 19\) lies outside the 24×20 image"):
        build_manifest(VocLayoutDataset(root, name="toy"), "train", require_masks=True)
    (root / "boxes.csv").write_text("image_id,class,x_min,y_min,x_max,y_max\na1,bird,0,0,3,3\n")
    with pytest.raises(DatasetError, match=r"boxes.csv line 2: unknown class 'bird'"):
        build_manifest(VocLayoutDataset(root, name="toy"), "train", require_masks=True)


def test_manifest_without_boxes_keeps_its_columns(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat"})
    path = write_manifest(build_manifest(VocLayoutDataset(root), "train", True), tmp_path / "data")
    assert path.read_text().splitlines()[0] == "image_id,image,mask,labels,height,width,digest"


def make_cub(root: Path, segmentations: bool = True) -> Path:
    """A CUB-200-2011 tree in the official layout: 2 classes, 4 images (3 train, 1 test)."""

    rows = [("1", "001.Black_footed_Albatross/Black_Footed_Albatross_0001_1.jpg", 1, 1, (3.0, 2.0, 10.0, 8.0)),
            ("2", "001.Black_footed_Albatross/Black_Footed_Albatross_0002_2.jpg", 1, 0, (0.0, 0.0, 24.0, 20.0)),
            ("3", "002.Laysan_Albatross/Laysan_Albatross_0003_3.jpg", 2, 1, (5.4, 4.6, 6.2, 6.0)),
            ("4", "002.Laysan_Albatross/Laysan_Albatross_0004_4.jpg", 2, 1, (1.0, 1.0, 4.0, 4.0))]
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    (root / "images.txt").write_text("".join(f"{n} {p}\n" for n, p, *_ in rows))
    (root / "image_class_labels.txt").write_text("".join(f"{n} {c}\n" for n, _, c, *_ in rows))
    (root / "train_test_split.txt").write_text("".join(f"{n} {t}\n" for n, _, _, t, _ in rows))
    (root / "bounding_boxes.txt").write_text("".join(f"{n} {' '.join(map(str, b))}\n" for n, *_, b in rows))
    for _, relative, _, _, (x, y, w, h) in rows:
        write_image(root / "images" / relative, np.full((20, 24, 3), 120, np.uint8))
        if segmentations:
            grey = np.zeros((20, 24), np.uint8)
            grey[int(y):int(y + h), int(x):int(x + w)] = 200  # most annotators
            grey[0, 0] = 100  # a minority: background
            path = (root / "segmentations" / relative).with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grey, mode="L").save(path)
    return root


def test_cub_layout_gives_classes_splits_boxes_and_converted_masks(tmp_path: Path) -> None:
    from wsss_steps.data.adapters import CubDataset, open_dataset
    from wsss_steps.data.manifest import Box

    root = make_cub(tmp_path / "CUB_200_2011")
    dataset = open_dataset({"kind": "cub", "root": str(root), "name": "cub"})
    assert isinstance(dataset, CubDataset)
    assert dataset.class_names == ("Black_footed_Albatross", "Laysan_Albatross")
    assert dataset.split_ids("train") == ["Black_Footed_Albatross_0001_1", "Laysan_Albatross_0003_3",
                                          "Laysan_Albatross_0004_4"]
    assert dataset.split_ids("test") == ["Black_Footed_Albatross_0002_2"]
    train = build_manifest(dataset, "train", require_masks=True, mask_dir=tmp_path / "masks")
    first, third = train.records[0], train.records[1]
    assert first.labels == (0,) and third.labels == (1,)
    assert first.boxes == (Box(0, 3, 2, 12, 9),)  # x 3, width 10 → columns 3..12
    assert third.boxes == (Box(1, 5, 5, 11, 10),)  # rounded: 5.4 → 5, 5.4 + 6.2 = 11.6 → 12, − 1
    mask = read_label_mask(first.mask_path)
    assert first.mask_path.parent == tmp_path / "masks"
    assert mask[2:10, 3:13].min() == 1 and mask.sum() == 80 and mask[0, 0] == 0
    assert read_label_mask(third.mask_path).max() == 2  # class index + 1
    test = build_manifest(dataset, "test", require_masks=True, mask_dir=tmp_path / "masks")
    assert test.records[0].boxes == (Box(0, 0, 0, 23, 19),)  # the whole 24 × 20 image
    again = build_manifest(dataset, "train", require_masks=True, mask_dir=tmp_path / "masks")
    assert again.content_digest() == train.content_digest()  # masks written once, same bytes
    with pytest.raises(DatasetError, match="splits are train, test, not 'val'"):
        dataset.split_ids("val")
    no_masks = make_cub(tmp_path / "plain", segmentations=False)
    plain = build_manifest(open_dataset({"kind": "cub", "root": str(no_masks), "name": "cub"}), "train",
                           require_masks=False, mask_dir=tmp_path / "plain_masks")
    assert all(r.mask_path is None for r in plain.records) and plain.records[0].boxes == first.boxes


def test_cub_problems_name_the_file(tmp_path: Path) -> None:
    from wsss_steps.data.adapters import CubDataset

    root = make_cub(tmp_path / "cub")
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n9 2\n")
    with pytest.raises(DatasetError, match=r"image_class_labels.txt: image ids \['9'\] are not in images.txt"):
        CubDataset(root)
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 3\n")
    with pytest.raises(DatasetError, match=r"class ids outside 1..2"):
        CubDataset(root)


# COCO (kind: coco): a fixture in the official layout, annotations read with pycocotools.

COCO_CATEGORIES = [{"id": 18, "name": "dog", "supercategory": "animal"},  # listed out of id order
                   {"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 3, "name": "car", "supercategory": "vehicle"}]


def _rectangle(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def make_coco(root: Path) -> Path:
    """train2014: img1 (40×30) with a person polygon, a dog polygon drawn over its right part and
    an RLE crowd of people over columns 30–39; img2 without any object; img3 with a car (two
    polygons). val2014: one image with a dog."""
    import json

    def image(split: str, number: int, width: int, height: int) -> dict:
        name = f"COCO_{split}_{number:012d}.jpg"
        write_image(root / split / name, np.full((height, width, 3), 90, np.uint8))
        return {"id": number, "file_name": name, "width": width, "height": height}

    def annotation(number: int, image_id: int, category: int, segmentation, bbox, crowd: int = 0) -> dict:
        return {"id": number, "image_id": image_id, "category_id": category, "segmentation": segmentation,
                "bbox": bbox, "iscrowd": crowd, "area": 1.0}

    # Uncompressed RLE (column-major counts): 30 columns of background, then 10 columns of crowd.
    crowd = {"size": [30, 40], "counts": [30 * 30, 10 * 30]}
    train = {
        "images": [image("train2014", 1, 40, 30), image("train2014", 2, 24, 20), image("train2014", 3, 32, 32)],
        "categories": COCO_CATEGORIES,
        "annotations": [
            annotation(10, 1, 1, _rectangle(2, 2, 20, 26), [2, 2, 18, 24]),
            annotation(11, 1, 18, _rectangle(12, 6, 28, 20), [12, 6, 16, 14]),
            annotation(12, 1, 1, crowd, [30, 0, 10, 30], crowd=1),
            annotation(13, 3, 3, _rectangle(1, 1, 10, 10) + _rectangle(20, 20, 30, 30), [1, 1, 29.4, 29.6]),
        ],
    }
    val = {"images": [image("val2014", 7, 20, 20)], "categories": COCO_CATEGORIES,
           "annotations": [annotation(20, 7, 18, _rectangle(3, 3, 15, 15), [3, 3, 12, 12])]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(train))
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(val))
    return root


def test_coco_classes_labels_masks_crowds_overlaps_and_empty_images(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    root = make_coco(tmp_path / "coco")
    out = tmp_path / "results" / "data"
    with caplog.at_level("WARNING"):
        assert prepare_data_main(["--kind", "coco", "--root", str(root), "--name", "coco", "--split", "train2014",
                                  "--require-masks", "--out-dir", str(out)]) == 0
    # The image without objects is left out, and said so with its count and id.
    assert "1 image(s) without any annotated object are left out: COCO_train2014_000000000002" in caplog.text
    manifest = read_manifest(out / "train2014.csv")
    assert manifest.class_names == ("person", "car", "dog")  # by category id: 1, 3, 18
    assert manifest.ids == ["COCO_train2014_000000000001", "COCO_train2014_000000000003"]
    first, third = manifest.records
    assert first.labels == (0, 2) and third.labels == (1,)  # the crowd's class counts; person 0, dog 2
    # Masks rasterised under the results' data folder, never beside the user's data.
    assert first.mask_path.resolve().parent == (out / "masks").resolve()
    assert not any(p.suffix == ".png" for p in root.rglob("*"))
    mask = read_label_mask(first.mask_path)
    assert mask.shape == (30, 40)
    assert (mask[4:25, 4:11] == 1).all()  # person alone
    assert (mask[8:19, 14:19] == 3).all()  # the dog, drawn after the person, wins their overlap
    assert (mask[8:19, 22:27] == 3).all()  # the dog alone
    assert (mask[:, 30:] == 255).all() and (mask[28:, :30] == 0).all()  # the RLE crowd is ignored; background
    assert set(np.unique(mask).tolist()) == {0, 1, 3, 255}
    car = read_label_mask(third.mask_path)
    assert (car[3:9, 3:9] == 2).all() and (car[22:29, 22:29] == 2).all() and (car[14:17, 14:17] == 0).all()
    # Boxes: the non-crowd instances' bbox as inclusive pixels, clipped to the image.
    assert [tuple(b) for b in first.boxes] == [(0, 2, 2, 19, 25), (2, 12, 6, 27, 19)]
    assert [tuple(b) for b in third.boxes] == [(1, 1, 1, 29, 30)]  # x 1 + 29.4 → 29; y 1 + 29.6 → 30
    # The val split shares the classes; a rerun rewrites nothing (same digests).
    assert prepare_data_main(["--kind", "coco", "--root", str(root), "--name", "coco", "--split", "val2014",
                              "--out-dir", str(out)]) == 0
    assert read_manifest(out / "val2014.csv").records[0].labels == (2,)
    before = (out / "train2014.csv").read_text()
    assert prepare_data_main(["--kind", "coco", "--root", str(root), "--name", "coco", "--split", "train2014",
                              "--out-dir", str(out)]) == 0
    assert (out / "train2014.csv").read_text() == before


def test_coco_problems_name_the_file(tmp_path: Path) -> None:
    from wsss_steps.data.adapters import CocoDataset

    root = make_coco(tmp_path / "coco")
    with pytest.raises(DatasetError, match=r"annotation file not found: .*instances_test2015.json"):
        CocoDataset(root).split_ids("test2015")
    path = root / "annotations" / "instances_train2014.json"
    text = path.read_text()
    path.write_text(text.replace('"category_id": 3,', '"category_id": 99,'))
    with pytest.raises(DatasetError, match=r"instances_train2014.json: annotations name category ids \[99\]"):
        CocoDataset(root).split_ids("train2014")
    path.write_text(text.replace("COCO_train2014_000000000003.jpg", "../x.jpg"))
    with pytest.raises(DatasetError, match=r"image 3 has file_name '../x.jpg'; a plain file name"):
        CocoDataset(root).split_ids("train2014")
    path.write_text("{}")
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        CocoDataset(root).split_ids("train2014")
