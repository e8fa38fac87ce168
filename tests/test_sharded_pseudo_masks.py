"""Sharded pseudo masks (pseudo_masks.shards): shard jobs each compute the masks of their part of the
seed split, merge_maps merges them and export_png writes the PNGs; the merged masks.h5 and png/ are
those of the unsharded step bitwise."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from wsss_steps import export_png, merge_maps, pseudo_masks
from wsss_steps.data.images import write_image
from wsss_steps.data.manifest import ImageRecord, Manifest, write_manifest
from wsss_steps.methods.labels import labels_at_threshold
from wsss_steps.store.maps import MapReader, MapWriter, merge_shards, shard_ids, shard_path
from wsss_steps.workflow.options import cli_options, pseudo_mask_settings
from wsss_steps.workflow.targets import pseudo_mask_shard_files, sharded_pseudo_mask_datasets

from .workflow_helpers import job_counts, snakemake, tiny_config, with_tiny_manifests, write_config

CLASSES = ("cat", "dog", "bird")
WALK_THRESHOLD = 0.3


def _build(root: Path, num_images: int = 7) -> tuple[Path, Path]:
    """Random images of 1–2 label classes and a merged random-walk file as the walk writes it
    (``cam``, ``pseudo_label`` at its sem_seg_bg_thres); returns (manifest csv, walk file)."""
    rng = np.random.default_rng(5)
    records, maps = [], {}
    for i in range(num_images):
        image_id = f"img{i}"
        height, width = int(rng.integers(12, 24)), int(rng.integers(12, 24))
        keys = np.sort(rng.choice(len(CLASSES), size=int(rng.integers(1, 3)), replace=False)).astype(np.int64)
        image_path = root / "JPEGImages" / f"{image_id}.jpg"
        write_image(image_path, rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        records.append(ImageRecord(image_id, image_path, None, tuple(int(k) for k in keys), height, width))
        cam = rng.random((keys.size, height, width)).astype(np.float32)
        maps[image_id] = {"cam": cam, "keys": keys, "pseudo_label": labels_at_threshold(cam, keys, WALK_THRESHOLD)}
    manifest_csv = write_manifest(Manifest("toy", "train", CLASSES, records), root / "data")
    shard = shard_path(root / "random_walk", 0, 1)
    with MapWriter(shard, stage="random_walk", method="cam", params={"sem_seg_bg_thres": WALK_THRESHOLD},
                   dataset="toy") as writer:
        for record in records:
            writer.write(record.image_id, maps[record.image_id], {"height": record.height, "width": record.width})
        writer.finish(list(maps))
    walk = root / "walk.h5"
    merge_shards([shard], walk, list(maps))
    return manifest_csv, walk


def _sharded(manifest_csv: Path, walk: Path, out: Path, num_shards: int, *options: str) -> list[Path]:
    """As the workflow with pseudo_masks.shards = num_shards: pseudo_masks_shard jobs, then
    merge_pseudo_masks (merge_maps, export_png) into out/masks.h5 and out/png; returns the shards."""
    shards = [shard_path(out / "shards", k, num_shards) for k in range(num_shards)]
    for k, path in enumerate(shards):
        assert pseudo_masks.main(["--maps", str(walk), "--manifest", str(manifest_csv), "--shard", str(k),
                                  "--num-shards", str(num_shards), "--out", str(path), *options]) == 0
    assert merge_maps.main(["--manifest", str(manifest_csv), "--out", str(out / "masks.h5"), *map(str, shards)]) == 0
    assert export_png.main(["--maps", str(out / "masks.h5"), "--map-name", "mask", "--manifest", str(manifest_csv),
                            "--out", str(out / "png")]) == 0
    return shards


def _assert_same_masks(a: Path, b: Path) -> None:
    """The same images, arrays (values, dtypes, shapes) and attributes; the merge adds num_images."""
    with h5py.File(a, "r") as left, h5py.File(b, "r") as right:
        assert sorted(left) == sorted(right)
        assert {k: v for k, v in left.attrs.items() if k != "num_images"} == \
            {k: v for k, v in right.attrs.items() if k != "num_images"}
        for image in left:
            assert sorted(left[image]) == sorted(right[image]) == ["keys", "mask", "mask_onehot"]
            assert dict(left[image].attrs) == dict(right[image].attrs)
            for name in left[image]:
                x, y = left[image][name][()], right[image][name][()]
                assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{image}/{name}"


def _assert_same_pngs(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("options", [
    pytest.param(["--crf", "--crf-iterations", "1", "--crf-gt-prob", "0.9"], id="crf"),
    pytest.param(["--no-crf"], id="no-crf"),
    pytest.param(["--threshold", "0.5"], id="threshold"),
])
def test_merged_shards_equal_the_unsharded_step(tmp_path: Path, options: list[str]) -> None:
    manifest_csv, walk = _build(tmp_path / "toy")
    whole = tmp_path / "whole"
    assert pseudo_masks.main(["--maps", str(walk), "--manifest", str(manifest_csv), "--out",
                              str(whole / "masks.h5"), "--export-png", str(whole / "png"), *options]) == 0
    _sharded(manifest_csv, walk, tmp_path / "three", 3, *options)
    _assert_same_masks(whole / "masks.h5", tmp_path / "three" / "masks.h5")
    _assert_same_pngs(whole / "png", tmp_path / "three" / "png")
    with MapReader(tmp_path / "three" / "masks.h5") as reader:
        assert reader.attrs["num_images"] == 7


def test_the_workflow_options_make_the_same_masks_sharded(tmp_path: Path) -> None:
    """The options the rules pass (the section as validated, shards left out), with more shards
    than images: empty shards merge too, and each shard holds the inference stages' images."""
    manifest_csv, walk = _build(tmp_path / "toy", num_images=3)
    section = {"crf": True, "crf_iterations": 1, "crf_gt_prob": 0.9, "shards": 5}
    options = cli_options(pseudo_mask_settings(section)).split()
    assert "--shards" not in options and "shards" not in pseudo_mask_settings(section)
    assert pseudo_mask_settings({"crf": False, "crf_iterations": 1, "crf_gt_prob": 0.9, "shards": 5}) == {"crf": False}
    whole = tmp_path / "whole"
    assert pseudo_masks.main(["--maps", str(walk), "--manifest", str(manifest_csv), "--out",
                              str(whole / "masks.h5"), "--export-png", str(whole / "png"), *options]) == 0
    shards = _sharded(manifest_csv, walk, tmp_path / "five", 5, *options)
    _assert_same_masks(whole / "masks.h5", tmp_path / "five" / "masks.h5")
    _assert_same_pngs(whole / "png", tmp_path / "five" / "png")
    ids = [f"img{i}" for i in range(3)]
    for k, path in enumerate(shards):
        with h5py.File(path, "r") as shard:
            assert sorted(shard) == shard_ids(ids, k, 5)


def test_shard_files_and_the_datasets_each_rule_takes() -> None:
    one, two = {"pseudo_masks": {"shards": 1}}, {"pseudo_masks": {"shards": 2}}  # as validated
    assert sharded_pseudo_mask_datasets({"a": one, "b": two}, sharded=True) == ["b"]
    assert sharded_pseudo_mask_datasets({"a": one, "b": two}, sharded=False) == ["a"]
    assert pseudo_mask_shard_files("b", two, "cam", "advcam") == [
        f"results/b/pseudo_masks/cam/advcam/shards/shard-{k}-of-2.h5" for k in range(2)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_tiny_manifests(tmp_path_factory.mktemp("sharded_pseudo_masks"))


def test_planning_with_and_without_pseudo_mask_shards(tiny_run: Path) -> None:
    write_config(tiny_run, tiny_config())
    today = job_counts(snakemake(tiny_run, "--dry-run").stdout)
    assert today["pseudo_masks"] == 1  # the one weakly supervised experiment: one job, no merge
    assert "pseudo_masks_shard" not in today and "merge_pseudo_masks" not in today

    write_config(tiny_run, tiny_config(pseudo_masks={"shards": 2}))
    output = snakemake(tiny_run, "--dry-run").stdout
    sharded = job_counts(output)
    assert sharded["pseudo_masks_shard"] == 2 and sharded["merge_pseudo_masks"] == 1
    assert "pseudo_masks" not in sharded
    assert {k: v for k, v in sharded.items() if k not in ("pseudo_masks_shard", "merge_pseudo_masks")} == \
        {k: v for k, v in today.items() if k != "pseudo_masks"}
    assert "results/tiny/pseudo_masks/cam/cam/shards/shard-1-of-2.h5" in output

    # Two experiments with pseudo masks: two shard jobs and a merge each.
    two = tiny_config(pseudo_masks={"shards": 2}, seeds={"cam": {"method": "cam", "scales": [1.0]},
                                                         "cam2": {"method": "cam", "scales": [1.0, 0.5]}},
                      experiments=[{"classifier": "cam", "seeds": "cam"}, {"classifier": "cam", "seeds": "cam2"}])
    write_config(tiny_run, two)
    sharded = job_counts(snakemake(tiny_run, "--dry-run").stdout)
    assert sharded["pseudo_masks_shard"] == 4 and sharded["merge_pseudo_masks"] == 2
    write_config(tiny_run, tiny_config())
