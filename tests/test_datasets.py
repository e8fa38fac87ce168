"""Dataset adapters and manifest: layouts read right, bad data named before any compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_steps.data.adapters import Voc2012Dataset, VocLayoutDataset, split_label_names
from wsss_steps.data.images import read_label_mask, write_image, write_label_mask
from wsss_steps.data.manifest import DatasetError, read_manifest, validate_image_id, write_manifest
from wsss_steps.data.manifest_builder import build_manifest
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
        for k, name in enumerate(split_label_names(names)):
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
    assert path.read_text().splitlines()[0] == "image_id,image,mask,label_ids,label_names,height,width,digest"


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

# Names with spaces, as 15 of COCO's 80 ("traffic light", "teddy bear", ...).
COCO_CATEGORIES = [{"id": 18, "name": "teddy bear", "supercategory": "indoor"},  # listed out of id order
                   {"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 3, "name": "traffic light", "supercategory": "outdoor"}]


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
    assert manifest.class_names == ("person", "traffic light", "teddy bear")  # by category id: 1, 3, 18
    assert manifest.ids == ["COCO_train2014_000000000001", "COCO_train2014_000000000003"]
    first, third = manifest.records
    assert first.labels == (0, 2) and third.labels == (1,)  # the crowd's class counts; person 0, teddy bear 2
    # Masks rasterised under the results' data folder, never beside the user's data.
    assert first.mask_path.resolve().parent == (out / "masks").resolve()
    assert not any(p.suffix == ".png" for p in root.rglob("*"))
    mask = read_label_mask(first.mask_path)
    assert mask.shape == (30, 40)
    assert (mask[4:25, 4:11] == 1).all()  # person alone
    assert (mask[8:19, 14:19] == 3).all()  # the teddy bear, drawn after the person, wins their overlap
    assert (mask[8:19, 22:27] == 3).all()  # the teddy bear alone
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


def test_coco_names_with_spaces_reach_the_manifest_classifier_and_seeds(tmp_path: Path) -> None:
    """COCO's multi-word class names travel as indices: the manifest reads back, the classifier
    trains on it and the seeds step writes maps for the labelled classes."""
    from wsss_steps import seeds, train_classifier

    root = make_coco(tmp_path / "coco")
    out = tmp_path / "data"
    for split in ("train2014", "val2014"):
        assert prepare_data_main(["--kind", "coco", "--root", str(root), "--name", "coco", "--split", split,
                                  "--out-dir", str(out)]) == 0
    text = (out / "train2014.csv").read_text()
    assert "person|teddy bear" in text and "1 1 1 29 30" in text  # label_names for people; boxes by index
    manifest = read_manifest(out / "train2014.csv")
    assert [r.labels for r in manifest.records] == [(0, 2), (1,)]
    assert [b.label for b in manifest.records[0].boxes] == [0, 2]
    model = tmp_path / "classifier"
    assert train_classifier.main([
        "--manifest", str(out / "train2014.csv"), "--val-manifest", str(out / "val2014.csv"),
        "--out", str(model / "model.pt"), "--metrics", str(model / "metrics.csv"),
        "--checkpoint-dir", str(model / "ckpt"), "--backbone", "small_resnet", "--epochs", "1",
        "--batch-size", "2", "--resize-long", "32", "40", "--crop", "32", "--threads", "1"]) == 0
    seeds.main(["--method", "cam", "--classifier", str(model / "model.pt"), "--manifest", str(out / "train2014.csv"),
                "--out", str(tmp_path / "seeds.h5"), "--scales", "1.0", "--device", "cpu"])
    from wsss_steps.store.maps import MapReader

    with MapReader(tmp_path / "seeds.h5") as reader:
        maps = reader.read("COCO_train2014_000000000001")
        np.testing.assert_array_equal(maps["keys"], [0, 2])
        assert maps["cam"].shape == (2, 30, 40)


def test_an_annotation_of_no_image_is_refused_by_its_id(tmp_path: Path) -> None:
    from wsss_steps.data.adapters import CocoDataset

    root = make_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train2014.json"
    path.write_text(path.read_text().replace('"id": 11, "image_id": 1,', '"id": 11, "image_id": 99,'))
    with pytest.raises(DatasetError, match=r"1 annotation\(s\) name an image_id that 'images' lacks "
                                           r"\(annotation ids \[11\]\)"):
        CocoDataset(root).split_ids("train2014")


def test_an_older_manifest_is_read_or_refused_by_name(tmp_path: Path) -> None:
    """Manifests from before class indices: read while no class name holds a space."""
    data = tmp_path / "data"
    data.mkdir()
    header = "image_id,image,mask,labels,height,width,digest,boxes\n"
    (data / "classes.txt").write_text("cat\ndog\n")
    (data / "train.csv").write_text(header + "a1,/x/a1.jpg,,dog cat,20,24,d,dog 1 2 3 4\n")
    record = read_manifest(data / "train.csv").records[0]
    assert record.labels == (1, 0) and tuple(record.boxes[0]) == (1, 1, 2, 3, 4)
    (data / "classes.txt").write_text("cat\nteddy bear\n")
    (data / "train.csv").write_text(header + "a1,/x/a1.jpg,,teddy bear,20,24,d,\n")
    with pytest.raises(DatasetError, match=r"train.csv \(a1\): written by an older version .*'teddy bear'.*"
                                           r"delete it and rerun prepare_data"):
        read_manifest(data / "train.csv")


def test_labels_csv_separates_names_with_spaces_by_semicolons(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "teddy bear;cat"}, classes=("cat", "teddy bear"))
    assert (root / "labels.csv").read_text() == "image_id,labels\na1,cat\na2,teddy bear;cat\n"
    manifest = build_manifest(VocLayoutDataset(root), "train", require_masks=True)
    written = read_manifest(write_manifest(manifest, tmp_path / "data"))
    assert [r.labels for r in written.records] == [(0,), (0, 1)]
    (root / "labels.csv").write_text("image_id,labels\na1,cat\na2,teddy bear cat\n")
    with pytest.raises(DatasetError, match=r"line 3: image 'a2' has unknown class name\(s\) \['teddy', 'bear'\].*"
                                           r"separate names with ';'"):
        build_manifest(VocLayoutDataset(root), "train", require_masks=True)


@pytest.mark.parametrize(("classes", "message"), [
    (("background", "cat", "dog"), "the first class is 'background': list foreground classes only"),
    (("cat", "cat"), r"class names repeat: \['cat'\]"),
    (("cat", "a;b"), "may not hold ';' or '|'"),
])
def test_bad_classes_txt_is_refused(tmp_path: Path, classes: tuple[str, ...], message: str) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat"})
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    with pytest.raises(DatasetError, match=message):
        VocLayoutDataset(root)


def test_labels_that_disagree_with_masks_are_refused_with_ids_and_classes(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog cat", "a3": "dog"})
    labels = root / "labels.csv"
    labels.write_text("image_id,labels\na1,cat dog\na2,dog\na3,dog\n")  # a1: dog absent; a2: cat missing
    with pytest.raises(DatasetError, match=r"2 problem\(s\)") as error:
        build_manifest(VocLayoutDataset(root), "train", require_masks=True)
    text = str(error.value)
    assert "image 'a1': its labels ['cat', 'dog'] disagree with its mask" in text
    assert "labels [1] have no pixel in the mask" in text
    assert "image 'a2': its labels ['dog'] disagree" in text and "classes [0] have pixels in the mask but no label" in text
    assert "a3" not in text
    # A label whose object is void in the mask (make_voc_layout's masks have a void row): allowed on request.
    labels.write_text("image_id,labels\na1,cat dog\na2,dog cat\na3,dog\n")
    with pytest.raises(DatasetError, match="allow_void_only accepts"):
        build_manifest(VocLayoutDataset(root), "train", require_masks=True)
    assert build_manifest(VocLayoutDataset(root), "train", True, label_mask_check="allow_void_only").records[0].labels \
        == (0, 1)
    labels.write_text("image_id,labels\na1,dog\na2,dog cat\na3,dog\n")
    with pytest.raises(DatasetError, match="classes \\[0\\] have pixels"):
        build_manifest(VocLayoutDataset(root), "train", True, label_mask_check="allow_void_only")
    assert build_manifest(VocLayoutDataset(root), "train", True, label_mask_check="none").records[0].labels == (1,)


def test_a_photo_with_an_exif_orientation_is_read_as_stored_everywhere(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A phone photo flagged 'rotate 90°' is read as stored by prepare_data's size check and by
    every step's reader, so it stays aligned with its mask (drawn on the stored pixels)."""
    from wsss_steps.data.images import read_image

    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog"}, size=(20, 24))
    pixels = np.zeros((20, 24, 3), np.uint8)
    pixels[:, :12] = 250  # left half bright: a rotation would move it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(pixels).save(root / "JPEGImages" / "a1.jpg", quality=100, exif=exif)
    with caplog.at_level("WARNING"):
        manifest = build_manifest(VocLayoutDataset(root), "train", require_masks=True)
    assert (manifest.records[0].height, manifest.records[0].width) == (20, 24)
    assert "1 image(s) carry an EXIF orientation flag" in caplog.text and "a1" in caplog.text
    image = read_image(root / "JPEGImages" / "a1.jpg")
    assert image.shape == (20, 24, 3)
    assert image[:, :10].mean() > 200 and image[:, 14:].mean() < 50


# Issue 29: bad inputs named, by file, line and id.

def test_dataset_kind_that_does_not_fit_the_folder_is_named(tmp_path: Path) -> None:
    from wsss_steps.data.adapters import open_dataset

    custom = make_voc_layout(tmp_path / "ds", {"a1": "cat"})
    with pytest.raises(DatasetError, match=r"ds looks like a custom layout \(classes.txt, labels.csv\), not a "
                                           r"VOC2012 folder: use dataset.kind: custom"):
        open_dataset({"kind": "voc2012", "root": str(custom), "name": "toy"})
    voc = tmp_path / "VOC2012"
    for folder in ("Annotations", "SegmentationClassAug", "JPEGImages", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"VOC2012 has no classes.txt and looks like a VOC2012 folder "
                                           r"\(Annotations/, SegmentationClassAug/\): use dataset.kind: voc2012"):
        open_dataset({"kind": "custom", "root": str(voc), "name": "voc12"})


def test_cub_kind_on_another_folder_and_malformed_cub_files_are_named(tmp_path: Path) -> None:
    from wsss_steps.data.adapters import CubDataset

    voc = make_voc_layout(tmp_path / "ds", {"a1": "cat"})
    with pytest.raises(DatasetError, match=r"ds is not a CUB-200-2011 folder: it lacks images.txt, "
                                           r"image_class_labels.txt, train_test_split.txt, bounding_boxes.txt, images/"):
        CubDataset(voc)
    root = make_cub(tmp_path / "cub", segmentations=False)
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\nLaysan_Albatross\n")
    with pytest.raises(DatasetError, match=r"classes.txt line 2: 'Laysan_Albatross' is not 'class_id class_name': "
                                           r".*cub is not a CUB-200-2011 folder"):
        CubDataset(root)
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    boxes = (root / "bounding_boxes.txt").read_text()
    (root / "bounding_boxes.txt").write_text(boxes + "9 1.0 1.0 2.0 2.0\n")
    with pytest.raises(DatasetError, match=r"bounding_boxes.txt: image ids \['9'\] are not in images.txt "
                                           r"\(the first on line 5\)"):
        CubDataset(root)
    (root / "bounding_boxes.txt").write_text(boxes)
    (root / "train_test_split.txt").write_text("1 1\n2 0\n\n7 1\n")
    with pytest.raises(DatasetError, match=r"train_test_split.txt: image ids \['7'\] are not in images.txt "
                                           r"\(the first on line 4\)"):
        CubDataset(root)


def test_every_adapters_boxes_pass_one_check(tmp_path: Path) -> None:
    import json
    import re

    from wsss_steps.data.adapters import CocoDataset, CubDataset
    from wsss_steps.data.manifest import Box

    root = make_cub(tmp_path / "cub", segmentations=False)
    lines = (root / "bounding_boxes.txt").read_text().splitlines()
    for values, message in (("5.0 4.0 0.0 6.0", "has a box of width 0 and height 6; both must be > 0"),
                            ("5.0 4.0 6.0 -2.5", "has a box of width 6 and height -2.5; both must be > 0")):
        (root / "bounding_boxes.txt").write_text("\n".join(lines[:2] + [f"3 {values}"] + lines[3:]) + "\n")
        with pytest.raises(DatasetError, match=r"bounding_boxes.txt line 3: image 3 \('Laysan_Albatross_0003_3'\) "
                                               + re.escape(message)):
            CubDataset(root)
    (root / "bounding_boxes.txt").write_text("\n".join(lines[:2] + ["3 -2.0 4.0 6.0 6.0"] + lines[3:]) + "\n")
    with pytest.raises(DatasetError, match=r"bounding_boxes.txt \(image 'Laysan_Albatross_0003_3'\): box "
                                           r"\(-2, 4, 3, 9\) .* has negative coordinates"):
        build_manifest(CubDataset(root), "train", require_masks=False, mask_dir=tmp_path / "masks")
    # boxes.csv: an inverted box, refused by the same check
    custom = make_voc_layout(tmp_path / "ds", {"a1": "cat"})
    (custom / "boxes.csv").write_text("image_id,class,x_min,y_min,x_max,y_max\na1,cat,5,0,3,3\n")
    with pytest.raises(DatasetError, match=r"boxes.csv line 2 \(image 'a1'\): box \(5, 0, 3, 3\) .* has "
                                           r"x_min 5 > x_max 3"):
        build_manifest(VocLayoutDataset(custom), "train", require_masks=True)

    # any adapter's boxes: build_manifest checks them (COCO's are not checked by its adapter)
    class InvertedBoxes(VocLayoutDataset):
        def boxes(self, image_id: str) -> tuple[Box, ...]:
            return (Box(0, 2, 9, 4, 3),)

    (custom / "boxes.csv").unlink()
    with pytest.raises(DatasetError, match=r"image 'a1': box \(2, 9, 4, 3\) .* has y_min 9 > y_max 3"):
        build_manifest(InvertedBoxes(custom), "train", require_masks=True)
    # COCO: a box under a pixel wide keeps its one pixel, not an inverted box
    coco = make_coco(tmp_path / "coco")
    path = coco / "annotations" / "instances_train2014.json"
    content = json.loads(path.read_text())
    content["annotations"][3]["bbox"] = [5.6, 7.0, 0.3, 2.0]
    path.write_text(json.dumps(content))
    manifest = build_manifest(CocoDataset(coco), "train2014", require_masks=False, mask_dir=tmp_path / "coco_masks")
    assert manifest.records[1].boxes == (Box(1, 6, 7, 6, 8),)


def test_split_file_line_with_spaces_is_refused(tmp_path: Path) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog"})
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text("a1 1\na2 -1\n")  # VOC's classification lists: "id label"
    assert VocLayoutDataset(root).split_ids("train") == ["a1", "a2"]
    split.write_text("a1\n\nmy photo 7\n")
    with pytest.raises(DatasetError, match=r"train.txt line 3: 'my photo 7' is not 'id' or 'id label' \(label -1, "
                                           r"0 or 1\): image ids cannot hold spaces"):
        VocLayoutDataset(root).split_ids("train")
    split.write_text("my photo\n")
    with pytest.raises(DatasetError, match=r"train.txt line 1: 'my photo' is not 'id'"):
        VocLayoutDataset(root).split_ids("train")


def test_one_bad_labels_row_is_one_problem(tmp_path: Path) -> None:
    ids = {f"a{k}": "cat" for k in range(8)}
    root = make_voc_layout(tmp_path / "ds", ids)
    (root / "labels.csv").write_text("image_id,labels\n" + "".join(
        f"{image_id},{'horse' if image_id == 'a2' else 'cat'}\n" for image_id in ids))
    with pytest.raises(DatasetError) as error:
        build_manifest(VocLayoutDataset(root), "train", require_masks=True)
    message = str(error.value)
    assert "1 problem(s):" in message and message.count("unknown class") == 1
    assert "line 4: image 'a2' has unknown class name(s) ['horse']" in message
    assert "(the same for 8 images)" in message


def test_boxes_of_no_split_or_of_an_unlabelled_class_are_warned(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog"})
    (root / "boxes.csv").write_text("image_id,class,x_min,y_min,x_max,y_max\n"
                                    "a1,cat,0,0,3,3\na1,dog,0,0,3,3\nzz9,cat,0,0,3,3\na2,dog,1,1,2,2\n")
    with caplog.at_level("WARNING"):
        manifest = build_manifest(VocLayoutDataset(root, name="toy"), "train", require_masks=True)
    assert len(manifest.records[0].boxes) == 2
    assert "boxes.csv: 1 image id(s) with boxes are in no split file of" in caplog.text
    assert "(their boxes are not used): zz9" in caplog.text
    assert "split 'train': 1 box class(es) are not among their image's labels" in caplog.text
    assert "a1 (dog)" in caplog.text


def test_prepare_data_reports_an_unwritable_out_dir_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from wsss_steps.cli import path_error_line

    root = make_voc_layout(tmp_path / "ds", {"a1": "cat"})
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be\n")
    argv = ["--kind", "custom", "--root", str(root), "--name", "toy", "--split", "train",
            "--out-dir", str(blocker / "data")]
    with pytest.raises(NotADirectoryError) as error:
        prepare_data_main(argv)
    assert path_error_line(error.value) == (
        f"{Path(sys.argv[0]).stem}: error: Not a directory: {blocker / 'data'} "
        "(a part of the path is a file, not a folder)")
    # run as the workflow runs it: one line, no traceback, exit status 1
    run = subprocess.run([sys.executable, "-m", "wsss_steps.prepare_data", *argv], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"prepare_data: error: Not a directory: {blocker / 'data'} (a part of the path is a file, not a folder)")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        argv[-1] = str(locked / "data")
        with pytest.raises(PermissionError) as denied:
            prepare_data_main(argv)
        assert path_error_line(denied.value).endswith(
            f"Permission denied: {locked / 'data'} (check the folder's permissions, or choose another results folder)")
