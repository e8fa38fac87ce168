"""Tests of the synthetic dataset generator (small sizes: the whole file runs in a few seconds)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from wsss_steps.data.adapters import VocLayoutDataset
from wsss_steps.data.generated import (
    CLASS_SPECS,
    GENERATOR_NAME,
    GeneratorError,
    GeneratorSettings,
    class_names,
    cooccurring_pair,
    generate_dataset,
    render_image,
)
from wsss_steps.data.images import IGNORE_LABEL, read_image, read_label_mask
from wsss_steps.data.manifest import validate_image_id
from wsss_steps.data.manifest_builder import build_manifest
from wsss_steps.generate_dataset import main

SMALL = GeneratorSettings(num_train=10, num_val=4, image_size=64, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _boxes(root: Path) -> dict[str, list[tuple[str, int, int, int, int]]]:
    boxes: dict[str, list[tuple[str, int, int, int, int]]] = defaultdict(list)
    with (root / "boxes.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["image_id", "class", "x_min", "y_min", "x_max", "y_max"]
        for row in reader:
            boxes[row["image_id"]].append((row["class"], int(row["x_min"]), int(row["y_min"]),
                                           int(row["x_max"]), int(row["y_max"])))
    return boxes


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen") / "dataset"
    generate_dataset(root, SMALL)
    return root


def test_same_settings_give_identical_bytes(small_dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_dataset(again, SMALL)
    first, second = _files(small_dataset), _files(again)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    other = tmp_path / "other_seed"
    generate_dataset(other, GeneratorSettings(num_train=10, num_val=4, image_size=64, seed=4))
    assert _files(other)["JPEGImages/train_000000.jpg"] != first["JPEGImages/train_000000.jpg"]


def test_images_do_not_depend_on_each_other() -> None:
    a = render_image(GeneratorSettings(num_train=5, image_size=64), "train", 3)
    b = render_image(GeneratorSettings(num_train=50, num_val=7, image_size=64), "train", 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    c = render_image(GeneratorSettings(image_size=64), "val", 3)
    assert not np.array_equal(a.image, c.image)


def test_layout_passes_the_manifest_checks(small_dataset: Path) -> None:
    dataset = VocLayoutDataset(small_dataset)
    assert dataset.class_names == class_names(6) == ("chair", "table", "bottle", "kite", "disc", "star")
    for split, count in (("train", SMALL.num_train), ("val", SMALL.num_val)):
        manifest = build_manifest(dataset, split, require_masks=True)
        assert len(manifest.records) == count
        assert manifest.ids[:2] == [f"{split}_000000", f"{split}_000001"]
        for record in manifest.records:
            validate_image_id(record.image_id)
            assert (record.height, record.width) == (64, 64)
    info = json.loads((small_dataset / "dataset.json").read_text())
    assert info["generator"] == GENERATOR_NAME
    assert info["settings"]["num_train"] == SMALL.num_train
    assert info["splits"]["val"]["images"] == SMALL.num_val
    assert info["cooccurring_pair"] == ["chair", "table"]


def test_masks_match_labels(small_dataset: Path) -> None:
    dataset = VocLayoutDataset(small_dataset)
    allowed = set(range(SMALL.num_classes + 1)) | {IGNORE_LABEL}
    for split in ("train", "val"):
        for image_id in dataset.split_ids(split):
            mask = read_label_mask(small_dataset / "SegmentationClass" / f"{image_id}.png")
            values = set(np.unique(mask).tolist())
            assert values <= allowed
            present = {v - 1 for v in values if v not in (0, IGNORE_LABEL)}
            assert present == set(dataset.labels(image_id)), image_id
            assert 0 < (mask == IGNORE_LABEL).mean() < 0.3  # a thin void band, not whole objects


def test_void_band_is_about_two_pixels_wide() -> None:
    rendered = render_image(GeneratorSettings(single_object=True), "train", 0)
    instance = rendered.instances == 1
    void = rendered.mask == IGNORE_LABEL
    kernel = np.ones((3, 3), np.uint8)
    inner = instance & ~cv2.erode(instance.astype(np.uint8), kernel).astype(bool)
    outer = cv2.dilate(instance.astype(np.uint8), kernel).astype(bool) & ~instance
    assert np.array_equal(void, inner | outer)


def test_object_and_label_counts() -> None:
    settings = GeneratorSettings(image_size=64, min_objects=2, max_objects=3, duplicate_prob=0.0)
    for index in range(30):
        rendered = render_image(settings, "train", index)
        assert 2 <= len(rendered.objects) <= 3
        assert len(rendered.labels) == len(rendered.objects)
    default = GeneratorSettings(image_size=64)
    counts = [len(render_image(default, "train", i).objects) for i in range(40)]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) == 3


def test_designated_pair_cooccurs_far_above_chance() -> None:
    settings = GeneratorSettings(image_size=48, object_scale_min=0.16, object_scale_max=0.24)
    chair, table = cooccurring_pair(settings.num_classes)
    bottle, kite = 2, 3
    labels = [set(render_image(settings, "train", i).labels) for i in range(150)]

    def rate(*classes: int) -> float:
        return float(np.mean([all(c in image for c in classes) for image in labels]))

    assert rate(chair, table) > 2.0 * rate(chair) * rate(table)
    assert rate(chair, table) / rate(chair) > 0.7 and rate(chair, table) / rate(table) > 0.7
    assert rate(bottle, kite) / rate(bottle) < 0.5  # other classes meet about by chance


def test_parts_are_small_saturated_and_class_coloured() -> None:
    settings = GeneratorSettings(part_prob=1.0)
    fractions = []
    background_saturated = []
    shown = []
    for index in range(24):
        rendered = render_image(settings, "val", index)
        hsv = cv2.cvtColor(rendered.image, cv2.COLOR_RGB2HSV_FULL).astype(np.float64)
        saturated = (hsv[..., 1] > 140) & (hsv[..., 2] > 100)
        background_saturated.append(saturated[rendered.instances == 0].mean())
        for number, obj in enumerate(rendered.objects, start=1):
            fractions.append(obj.part_fraction)
            own = rendered.instances == number
            inner = own & cv2.erode(own.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            part, body = inner & rendered.parts, inner & ~rendered.parts
            shown.append(obj.visible_part_area > 0)
            if part.sum() >= 4:
                assert saturated[part].mean() > 0.9
                hue = np.median(hsv[..., 0][part]) * 360 / 256
                error = (hue - CLASS_SPECS[obj.class_index].part_hue + 180) % 360 - 180
                assert abs(error) < 20
            assert saturated[body].mean() < 0.02  # bodies are muted: the part is the colour cue
    fractions_array = np.array(fractions)
    assert fractions_array.min() >= 0.04 and fractions_array.max() <= 0.14
    assert settings.part_fraction_min <= fractions_array.mean() <= settings.part_fraction_max
    assert max(background_saturated) < 0.01  # clutter never uses part colours
    assert all(shown)  # part_prob 1 here


def test_half_the_objects_show_their_part_by_default() -> None:
    """The default hides half the parts: then only the body tells the class (docs/datasets.md, "The default
    generated dataset": that brings the CAMs' precision and recall near MSRC's)."""
    settings = GeneratorSettings()
    assert settings.part_prob == 0.5
    objects = [obj for index in range(32) for obj in render_image(settings, "train", index).objects]
    shown = np.mean([obj.visible_part_area > 0 for obj in objects])
    assert 0.35 < shown < 0.65


def test_part_prob_hides_some_parts() -> None:
    settings = GeneratorSettings(part_prob=0.7)
    objects = [obj for index in range(24) for obj in render_image(settings, "val", index).objects]
    shown = np.mean([obj.visible_part_area > 0 for obj in objects])
    assert 0.5 < shown < 0.9


def test_boxes_match_masks(small_dataset: Path) -> None:
    dataset = VocLayoutDataset(small_dataset)
    names = dataset.class_names
    boxes = _boxes(small_dataset)
    for image_id in dataset.split_ids("train") + dataset.split_ids("val"):
        mask = read_label_mask(small_dataset / "SegmentationClass" / f"{image_id}.png")
        assert {names.index(row[0]) for row in boxes[image_id]} == set(dataset.labels(image_id))
        for class_index in dataset.labels(image_id):
            covered = np.zeros(mask.shape, bool)
            for name, x0, y0, x1, y1 in boxes[image_id]:
                if name != names[class_index]:
                    continue
                assert 0 <= x0 <= x1 < mask.shape[1] and 0 <= y0 <= y1 < mask.shape[0]
                covered[y0:y1 + 1, x0:x1 + 1] = True
                inside = mask[y0:y1 + 1, x0:x1 + 1]
                on_object = (inside == class_index + 1) | (inside == IGNORE_LABEL)
                # the box is tight: each of its sides touches the object (its void edge)
                assert on_object[0].any() and on_object[-1].any()
                assert on_object[:, 0].any() and on_object[:, -1].any()
            assert covered[mask == class_index + 1].all()


def test_single_object_variant(tmp_path: Path) -> None:
    settings = GeneratorSettings(num_train=12, num_val=6, image_size=64, single_object=True)
    info = generate_dataset(tmp_path / "wsol", settings)
    root = tmp_path / "wsol"
    dataset = VocLayoutDataset(root)
    boxes = _boxes(root)
    train_ids = dataset.split_ids("train")
    assert [len(dataset.labels(i)) for i in train_ids] == [1] * 12
    assert all(len(boxes[i]) == 1 for i in train_ids + dataset.split_ids("val"))
    assert sorted(info["splits"]["train"]["class_images"].values()) == [2] * 6  # balanced
    for image_id in train_ids:
        mask = read_label_mask(root / "SegmentationClass" / f"{image_id}.png")
        _, x0, y0, x1, y1 = boxes[image_id][0]
        ys, xs = np.nonzero(mask > 0)  # the object and its void band, which reaches 1 px outside
        assert (xs.min(), ys.min()) == (max(x0 - 1, 0), max(y0 - 1, 0))
        assert (xs.max(), ys.max()) == (min(x1 + 1, 63), min(y1 + 1, 63))


def test_refuses_unrelated_folders_and_replaces_its_own(tmp_path: Path) -> None:
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(GeneratorError, match="refusing"):
        generate_dataset(unrelated, SMALL)
    assert [p.name for p in unrelated.iterdir()] == ["notes.txt"]
    (unrelated / "dataset.json").write_text(json.dumps({"generator": "something else"}))
    with pytest.raises(GeneratorError, match="refusing"):
        generate_dataset(unrelated, SMALL)

    out = tmp_path / "out"
    generate_dataset(out, GeneratorSettings(num_train=6, num_val=2, image_size=48))
    generate_dataset(out, GeneratorSettings(num_train=3, num_val=2, image_size=48))
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == [
        "train_000000.jpg", "train_000001.jpg", "train_000002.jpg", "val_000000.jpg", "val_000001.jpg"]
    assert read_image(out / "JPEGImages" / "val_000001.jpg").shape == (48, 48, 3)
    (out / "extra.txt").write_text("user file")
    with pytest.raises(GeneratorError, match="extra.txt"):
        generate_dataset(out, SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "unrelated"]  # no staging left


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(GeneratorError, match="min_objects"):
        GeneratorSettings(min_objects=3, max_objects=2)
    with pytest.raises(GeneratorError, match="num_classes"):
        GeneratorSettings(num_classes=len(CLASS_SPECS) + 1)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--single-object" in help_text and "--num-train" in help_text
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--num-train", "4", "--num-val", "2", "--image-size", "48",
                 "--num-classes", "3", "--seed", "7", "--single-object"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["settings"]["single_object"] is True and info["classes"] == ["chair", "table", "bottle"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    assert main(["--out", str(tmp_path / "busy")]) == 2
    assert "refusing" in capsys.readouterr().err
