"""Every artifact knows what made it (issue 14: cases 2 stale classifier, 3 seeds of two
classifiers in one file, 5 edits ignored, 6 silently wrong data, 7 a model file that is not one),
and a resume continues only work of the same identity."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.test_datasets import make_voc_layout
from tests.test_train_classifier import CLASSES, SIZE
from tests.test_train_classifier import _draw as draw_shapes
from tests.workflow_helpers import (
    ENV,
    SNAKEMAKE,
    assert_same_maps,
    assert_same_weights,
    job_counts,
    snakemake,
    tiny_config,
    write_config,
)
from wsss_steps import seeds, train_classifier
from wsss_steps.data.adapters import VocLayoutDataset
from wsss_steps.data.images import write_image, write_label_mask
from wsss_steps.data.manifest import DatasetError, read_manifest, write_manifest
from wsss_steps.data.manifest_builder import build_manifest
from wsss_steps.networks.io import load_classifier, model_identity, read_classifier_meta
from wsss_steps.store.digests import file_digest
from wsss_steps.store.maps import MapReader, shard_path
from wsss_steps.store.shards import write_map_shard


def _draw_split(root: Path, split: str, count: int, seed: int) -> None:
    """Red squares and blue discs on noise; ``seed`` changes every pixel, not the ids or labels."""
    rng = np.random.default_rng(seed)
    ids, rows = [], []
    for i in range(count):
        classes = [[0], [1], [0, 1]][i % 3]
        image, mask = draw_shapes(rng, classes)
        image_id = f"{split}_{i:03d}"
        write_image(root / "JPEGImages" / f"{image_id}.jpg", image)
        write_label_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
        ids.append(image_id)
        rows.append(f"{image_id},{' '.join(CLASSES[c] for c in classes)}")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    labels = root / "labels.csv"
    previous = [r for r in (labels.read_text().splitlines()[1:] if labels.exists() else [])
                if not r.startswith(f"{split}_")]
    labels.write_text("image_id,labels\n" + "\n".join(previous + rows) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")


def _shapes(root: Path, seed: int = 0) -> tuple[Path, Path]:
    _draw_split(root, "train", 16, seed)
    _draw_split(root, "val", 6, seed + 100)
    dataset = VocLayoutDataset(root, name="shapes")
    out = root / "manifest"
    return (write_manifest(build_manifest(dataset, "train", require_masks=False), out),
            write_manifest(build_manifest(dataset, "val", require_masks=False), out))


def _train_args(train: Path, val: Path, out: Path, epochs: int = 2, *extra: str) -> list[str]:
    return ["--manifest", str(train), "--val-manifest", str(val), "--out", str(out / "model.pt"),
            "--metrics", str(out / "metrics.csv"), "--checkpoint-dir", str(out / "ckpt"),
            "--backbone", "small_resnet", "--epochs", str(epochs), "--batch-size", "8", "--lr", "0.05",
            "--resize-long", "40", "56", "--crop", "48", "--seed", "1", "--threads", "1", *extra]


def test_replacing_an_images_pixels_changes_the_splits_identity(tmp_path: Path) -> None:
    train, _ = _shapes(tmp_path / "ds")
    before = read_manifest(train)
    path = tmp_path / "ds" / "JPEGImages" / "train_003.jpg"
    write_image(path, np.full((SIZE, SIZE, 3), 128, np.uint8))
    after = build_manifest(VocLayoutDataset(tmp_path / "ds", name="shapes"), "train", require_masks=False)
    assert after.ids == before.ids and [r.labels for r in after.records] == [r.labels for r in before.records]
    changed = [a.image_id for a, b in zip(after.records, before.records, strict=True) if a.digest != b.digest]
    assert changed == ["train_003"]
    assert after.content_digest() != before.content_digest()
    # A manifest written before digests existed hashes the files instead: same identity.
    stripped = type(after)(after.dataset, after.split, after.class_names,
                           [type(r)(*[getattr(r, f) for f in ("image_id", "image_path", "mask_path", "labels",
                                                              "height", "width", "boxes")]) for r in after.records])
    assert stripped.content_digest() == after.content_digest()


def test_training_never_resumes_a_checkpoint_of_other_pixels(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    """Case 2: same ids and labels, every training JPEG replaced: the rerun starts fresh."""
    train, val = _shapes(tmp_path / "ds", seed=0)
    run = tmp_path / "run"
    assert train_classifier.main(_train_args(train, val, run, 2, "--stop-after-epochs", "1")) == 0
    assert (run / "ckpt" / "last.pt").is_file() and not (run / "model.pt").exists()
    train, val = _shapes(tmp_path / "ds", seed=7)  # new pixels, same ids and labels
    with caplog.at_level(logging.WARNING):
        assert train_classifier.main(_train_args(train, val, run, 2)) == 0
    assert "written with other settings (differing: train_digest)" in caplog.text
    fresh = tmp_path / "fresh"
    assert train_classifier.main(_train_args(train, val, fresh, 2)) == 0
    assert_same_weights(run / "model.pt", fresh / "model.pt")
    meta = read_classifier_meta(run / "model.pt")
    assert meta["settings_hash"] and model_identity(run / "model.pt", meta) == meta["settings_hash"]


def test_a_model_file_without_an_identity_stands_for_its_bytes(tmp_path: Path) -> None:
    assert model_identity(tmp_path / "x.pt", {"settings_hash": "abc"}) == "abc"
    (tmp_path / "old.pt").write_bytes(b"weights of an older release")
    assert model_identity(tmp_path / "old.pt", {}) == file_digest(tmp_path / "old.pt")


@pytest.fixture(scope="module")
def two_classifiers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("seeds")
    train, val = _shapes(root / "ds")
    for name, seed in (("a", "1"), ("b", "2")):
        args = _train_args(train, val, root / name, 1)
        args[args.index("--seed") + 1] = seed
        assert train_classifier.main(args) == 0
    return train, root / "a" / "model.pt", root / "b" / "model.pt"


def _seeds(classifier: Path, manifest: Path, out: Path) -> int:
    return seeds.main(["--classifier", str(classifier), "--manifest", str(manifest), "--out", str(out),
                       "--method", "cam", "--scales", "1.0", "--threads", "1"])


def test_seeds_of_another_classifier_are_not_mixed_into_a_partial_shard(
        two_classifiers: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Case 3: a partial shard of classifier A, classifier retrained (B), rerun: only B's maps."""
    manifest, a, b = two_classifiers
    fresh_b = tmp_path / "fresh_b.h5"
    assert _seeds(b, manifest, fresh_b) == 0
    out = tmp_path / "shard.h5"
    assert _seeds(a, manifest, out) == 0
    out.rename(out.with_name(out.name + ".partial"))  # A's maps, as a killed shard leaves them
    with caplog.at_level(logging.INFO):
        assert _seeds(b, manifest, out) == 0
    assert "written by another computation (its params differ: params classifier)" in caplog.text
    assert "already written" not in caplog.text
    assert_same_maps(out, fresh_b)
    with MapReader(out) as reader:
        assert reader.params["classifier"] == read_classifier_meta(b)["settings_hash"]
        assert reader.params["images"] == read_manifest(manifest).content_digest()
    # The same classifier continues its own partial shard.
    out.rename(out.with_name(out.name + ".partial"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _seeds(b, manifest, out) == 0
    assert "16 of 16 images already written" in caplog.text


@pytest.mark.parametrize("kill_after", [0, 3, 9, 15])
def test_a_killed_shard_resumed_after_an_upstream_change_holds_one_upstream_state(
        kill_after: int, tmp_path: Path) -> None:
    """Property: killed at any image, rerun with other upstream params: every map is the new run's."""
    train, _ = _shapes(tmp_path / "ds")
    manifest = read_manifest(train)

    def computation(version: int, stop: int | None):
        done = []

        def compute(record):
            if stop is not None and len(done) == stop:
                raise KeyboardInterrupt  # the kill
            done.append(record.image_id)
            return {"map": np.full((len(record.labels), 4, 4), version, np.float32)}
        return compute

    out = shard_path(tmp_path, 0, 1)
    with pytest.raises(KeyboardInterrupt):
        write_map_shard(manifest, 0, 1, out, computation(1, kill_after), "seeds", "cam", {"upstream": 1})
    assert write_map_shard(manifest, 0, 1, out, computation(2, None), "seeds", "cam", {"upstream": 2}) == 16
    with h5py.File(out, "r") as maps:
        assert {float(maps[i]["map"][()].max()) for i in maps} == {2.0}


def test_user_dataset_edits_rerun_prepare_data(tmp_path: Path) -> None:
    """Case 5: labels.csv edited, an image replaced: prepare_data reruns (and what follows)."""
    root = make_voc_layout(tmp_path / "mine", {"a1": "cat", "a2": "dog cat", "a3": "dog"})
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a1\na2\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a3\n")
    config = tiny_config(dataset={"name": "mine", "kind": "custom", "root": str(root)})
    write_config(tmp_path, config)

    def to_rerun() -> int:
        return job_counts(snakemake(tmp_path, "-n", "--until", "prepare_data").stdout).get("prepare_data", 0)

    snakemake(tmp_path, "--cores", "1", "--until", "prepare_data")
    assert to_rerun() == 0
    labels = root / "labels.csv"
    labels.write_text(labels.read_text().replace("a1,cat", "a1,dog"))
    write_label_mask(root / "SegmentationClass" / "a1.png", np.full((20, 24), 2, np.uint8))  # a dog now
    assert to_rerun() == 2  # both splits read labels.csv
    snakemake(tmp_path, "--cores", "1", "--until", "prepare_data")
    write_image(root / "JPEGImages" / "a3.jpg", np.zeros((20, 24, 3), np.uint8))
    assert to_rerun() == 1  # a3 is in val only
    snakemake(tmp_path, "--cores", "1", "--until", "prepare_data")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a1\n")
    assert to_rerun() == 1
    snakemake(tmp_path, "--cores", "1", "--until", "prepare_data")
    assert "|dog|" in (tmp_path / "results" / "mine" / "data" / "train.csv").read_text().splitlines()[1].replace(",", "|")
    # A replacement that keeps an older modification time (cp -p, rsync -a, tar) reruns by content;
    # a copy of the same bytes (new inode, new status-change time) reruns nothing.
    backup = tmp_path / "a3_backup.jpg"
    write_image(backup, np.full((20, 24, 3), 77, np.uint8))
    os.utime(backup, (1_000_000_000, 1_000_000_000))  # 2001
    subprocess.run(["cp", "-p", str(backup), str(root / "JPEGImages" / "a3.jpg")], check=True)
    assert to_rerun() == 1
    snakemake(tmp_path, "--cores", "1", "--until", "prepare_data")
    assert to_rerun() == 0
    same = tmp_path / "a3_same.jpg"
    subprocess.run(["cp", "-p", str(root / "JPEGImages" / "a3.jpg"), str(same)], check=True)
    subprocess.run(["cp", "-p", str(same), str(root / "JPEGImages" / "a3.jpg")], check=True)
    assert to_rerun() == 0


def test_val_split_needs_every_mask_when_segmentation_is_evaluated(tmp_path: Path) -> None:
    """Case 7: a val image without a mask stops the workflow before any job; without a
    segmentation experiment the val split needs no masks and the run goes on."""
    root = make_voc_layout(tmp_path / "mine", {"a1": "cat", "a2": "dog cat", "a3": "dog"})
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a1\na2\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a3\n")
    (root / "SegmentationClass" / "a3.png").unlink()
    write_config(tmp_path, tiny_config(dataset={"name": "mine", "kind": "custom", "root": str(root)}))
    result = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "1"], capture_output=True,
                            text=True, timeout=600, env=ENV)
    assert result.returncode != 0
    assert "dataset mine: 1 image(s) of split 'val' have no ground-truth mask (e.g. 'a3')" in result.stderr
    assert not (tmp_path / "results").exists()
    config = tiny_config(dataset={"name": "mine", "kind": "custom", "root": str(root)},
                         experiments=[{"classifier": "cam", "seeds": "cam", "pseudo_masks": False}])
    write_config(tmp_path, config)
    snakemake(tmp_path, "--cores", "1", "--until", "prepare_data")
    assert (tmp_path / "results" / "mine" / "data" / "val.csv").is_file()


def test_seed_split_needs_every_mask_where_seeds_are_scored(tmp_path: Path) -> None:
    """A train image without a mask stops a WSSS run before any job (its seeds are scored there)."""
    root = make_voc_layout(tmp_path / "mine", {"a1": "cat", "a2": "dog cat", "a3": "dog"})
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a1\na2\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a3\n")
    (root / "SegmentationClass" / "a2.png").unlink()
    write_config(tmp_path, tiny_config(dataset={"name": "mine", "kind": "custom", "root": str(root)}))
    result = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "-n"], capture_output=True, text=True,
                            timeout=600, env=ENV)
    assert result.returncode != 0
    assert "dataset mine: 1 image(s) of split 'train' have no ground-truth mask (e.g. 'a2'); seeds and pseudo " \
           "masks are scored on that split" in result.stdout + result.stderr


def test_damaged_or_oversized_images_and_repeated_label_rows_are_named(tmp_path: Path) -> None:
    """Case 6: a truncated JPEG (OpenCV decodes it as mostly grey), a repeated labels.csv row, an
    image above the pixel limit: each named by prepare_data."""
    root = make_voc_layout(tmp_path / "ds", {"a1": "cat", "a2": "dog", "a3": "cat dog"}, size=(40, 48))
    jpeg = root / "JPEGImages" / "a2.jpg"
    write_image(jpeg, np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    jpeg.write_bytes(jpeg.read_bytes()[: int(jpeg.stat().st_size * 0.4)])
    with pytest.raises(DatasetError) as error:
        build_manifest(VocLayoutDataset(root), "train", require_masks=True)
    assert f"could not be decoded (damaged or truncated): {jpeg}" in str(error.value)
    assert "1 problem(s)" in str(error.value)
    shutil.copy(root / "JPEGImages" / "a1.jpg", jpeg)

    with pytest.raises(DatasetError, match=r"a1.jpg is 48×40 = 1920 pixels, above the limit of 1000 \(raise it "
                                           r"with the config key dataset.max_image_pixels"):
        build_manifest(VocLayoutDataset(root), "train", require_masks=True, max_image_pixels=1000)

    labels = root / "labels.csv"
    labels.write_text(labels.read_text() + "a2,cat\n")
    with pytest.raises(DatasetError, match=r"labels.csv line 5: image 'a2' has a second row \(line 3\)"):
        build_manifest(VocLayoutDataset(root), "train", require_masks=True)


def test_a_pickled_model_file_is_refused_by_name(tmp_path: Path) -> None:
    """Case 7: torch's weights-only refusal, with the file named."""
    path = tmp_path / "model.pt"
    torch.save({"format": "wsss_classifier/2", "payload": argparse.Namespace(code="not weights")}, path)
    with pytest.raises(ValueError, match=rf"classifier file {path} is not a weights-only torch file"):
        load_classifier(path)
