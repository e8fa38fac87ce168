"""Dataset adapters and manifest: layouts read right, bad data named before any compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss_steps.data.adapters import Voc2012Dataset, VocLayoutDataset, build_manifest
from wsss_steps.data.images import write_image, write_label_mask
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
