"""Sharded sweeps (evaluation.shards): shard jobs each score their part of the seed split and a merge
sums their confusion matrices; the merged outputs are byte-for-byte the unsharded scoring's."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from wsss_steps.data.images import write_image, write_label_mask
from wsss_steps.data.manifest import ImageRecord, Manifest, write_manifest
from wsss_steps.evaluate_masks import main
from wsss_steps.evaluation.masks import EvaluationError
from wsss_steps.store.maps import MapWriter, merge_shards, shard_ids, shard_path
from wsss_steps.workflow.targets import sharded_evaluation_datasets, sweep_shard_files

from .workflow_helpers import job_counts, snakemake, tiny_config, with_tiny_manifests, write_config

CLASSES = ("cat", "dog", "bird")


def _build(root: Path, num_images: int = 7, saliency: bool = False) -> tuple[Path, Path]:
    """Random images, masks (with ignored pixels) and seed maps of 1–2 label classes; returns
    (manifest csv, merged map file)."""
    rng = np.random.default_rng(3)
    records, maps = [], {}
    for i in range(num_images):
        image_id = f"img{i}"
        height, width = int(rng.integers(12, 20)), int(rng.integers(12, 20))
        keys = np.sort(rng.choice(len(CLASSES), size=int(rng.integers(1, 3)), replace=False)).astype(np.int64)
        mask = rng.choice(np.r_[0, keys + 1], size=(height, width)).astype(np.uint8)
        mask[rng.random((height, width)) < 0.05] = 255
        image_path = root / "JPEGImages" / f"{image_id}.jpg"
        mask_path = root / "SegmentationClass" / f"{image_id}.png"
        write_image(image_path, rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        write_label_mask(mask_path, mask)
        records.append(ImageRecord(image_id, image_path, mask_path, tuple(int(k) for k in keys), height, width))
        arrays = {"cam": rng.random((keys.size, height, width)).astype(np.float32), "keys": keys}
        if saliency:
            arrays["saliency"] = rng.random((height, width)).astype(np.float32)
        maps[image_id] = arrays
    manifest_csv = write_manifest(Manifest("toy", "train", CLASSES, records), root / "data")
    shard = shard_path(root / "seeds", 0, 1)
    with MapWriter(shard, stage="seeds", method="cam", params={}, dataset="toy") as writer:
        for record in records:
            writer.write(record.image_id, maps[record.image_id], {"height": record.height, "width": record.width})
        writer.finish(list(maps))
    merged = root / "seeds.h5"
    merge_shards([shard], merged, list(maps))
    return manifest_csv, merged


IDENTITY = ["--dataset", "toy", "--stage", "seeds", "--method", "cam", "--classifier", "cam", "--split", "train"]


def _outputs(out: Path) -> list[str]:
    return ["--curve", str(out / "curve.csv"), "--per-class", str(out / "per_class.csv"),
            "--summary", str(out / "summary_rows.csv")]


def _sharded(manifest_csv: Path, maps: Path, out: Path, num_shards: int, *options: str) -> list[Path]:
    """Scores every shard, then merges them into out/; returns the shard files."""
    shards = [out / "shards" / f"shard-{k}-of-{num_shards}.npz" for k in range(num_shards)]
    for k, path in enumerate(shards):
        assert main(["--manifest", str(manifest_csv), "--maps", str(maps), *options, "--shard", str(k),
                     "--num-shards", str(num_shards), "--confusions", str(path)]) == 0
    assert main(["--manifest", str(manifest_csv), "--merge", *map(str, shards), *IDENTITY, *_outputs(out)]) == 0
    return shards


def _assert_same_outputs(a: Path, b: Path) -> None:
    for name in ("curve.csv", "per_class.csv", "summary_rows.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name


@pytest.mark.parametrize("options", [
    pytest.param(["--thresholds", "0.1", "0.9", "0.1"], id="sweep"),
    pytest.param(["--crf", "--crf-thresholds", "0.2", "0.6", "0.2", "--workers", "2"], id="crf-sweep"),
    pytest.param(["--saliency-background"], id="saliency-background"),
])
def test_merged_shards_equal_the_unsharded_scoring(tmp_path: Path, options: list[str]) -> None:
    manifest_csv, maps = _build(tmp_path / "toy", saliency="--saliency-background" in options)
    whole = tmp_path / "whole"
    assert main(["--manifest", str(manifest_csv), "--maps", str(maps), *options, *IDENTITY, *_outputs(whole)]) == 0
    _sharded(manifest_csv, maps, tmp_path / "two", 2, *options)
    _assert_same_outputs(whole, tmp_path / "two")
    rows = list(csv.DictReader((tmp_path / "two" / "summary_rows.csv").open()))
    assert {r["metric"]: r["value"] for r in rows}["num_images"] == "7"


def test_more_shards_than_images_and_the_shards_hold_their_images(tmp_path: Path) -> None:
    manifest_csv, maps = _build(tmp_path / "toy", num_images=3)
    whole = tmp_path / "whole"
    assert main(["--manifest", str(manifest_csv), "--maps", str(maps), *IDENTITY, *_outputs(whole)]) == 0
    shards = _sharded(manifest_csv, maps, tmp_path / "five", 5)  # some shards are empty
    _assert_same_outputs(whole, tmp_path / "five")
    ids = [f"img{i}" for i in range(3)]
    for k, path in enumerate(shards):  # the inference stages' assignment of images to shards
        with np.load(path) as data:
            assert data["image_ids"].tolist() == shard_ids(ids, k, 5)
            assert data["confusions"].dtype == np.int64 and data["confusions"].shape == (16, 4, 4)


def test_a_merge_of_the_wrong_shards_is_refused(tmp_path: Path) -> None:
    manifest_csv, maps = _build(tmp_path / "toy")
    shards = _sharded(manifest_csv, maps, tmp_path / "two", 2)
    merge = ["--manifest", str(manifest_csv), *IDENTITY, *_outputs(tmp_path / "bad")]
    with pytest.raises(EvaluationError, match="both shard 0"):
        main([*merge, "--merge", str(shards[0]), str(shards[0])])
    with pytest.raises(EvaluationError, match="shard 0 of 2; 1 shard files"):
        main([*merge, "--merge", str(shards[0])])
    other = _sharded(manifest_csv, maps, tmp_path / "other", 2, "--thresholds", "0.2", "0.4", "0.1")
    with pytest.raises(EvaluationError, match="thresholds"):
        main([*merge, "--merge", str(shards[0]), str(other[1])])
    assert not (tmp_path / "bad" / "curve.csv").exists()
    with pytest.raises(SystemExit, match="--confusions"):
        main(["--manifest", str(manifest_csv), "--maps", str(maps), "--shard", "1", "--num-shards", "2",
              *_outputs(tmp_path / "bad")])


def test_shard_files_and_the_datasets_each_rule_takes() -> None:
    one, two = {"evaluation": {"shards": 1}}, {"evaluation": {"shards": 2}}  # as validated: the key is there
    assert sharded_evaluation_datasets({"a": one, "b": two}, sharded=True) == ["b"]
    assert sharded_evaluation_datasets({"a": one, "b": two}, sharded=False) == ["a"]
    assert sweep_shard_files("b", two, "seeds_crf", "cam", "cam") == [
        f"results/b/eval/seeds_crf/cam/cam/shards/shard-{k}-of-2.npz" for k in range(2)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_tiny_manifests(tmp_path_factory.mktemp("sharded_evaluation"))


def test_planning_with_and_without_evaluation_shards(tiny_run: Path) -> None:
    write_config(tiny_run, tiny_config())
    today = job_counts(snakemake(tiny_run, "--dry-run").stdout)
    # seeds, seeds_crf, pseudo_masks, pseudo_masks_crf: one job each, no merge
    assert today["evaluate_sweep"] == 4
    assert "evaluate_sweep_shard" not in today and "merge_sweep" not in today

    write_config(tiny_run, tiny_config(evaluation={**tiny_config()["evaluation"], "shards": 2}))
    output = snakemake(tiny_run, "--dry-run").stdout
    sharded = job_counts(output)
    assert sharded["evaluate_sweep_shard"] == 8 and sharded["merge_sweep"] == 4
    assert "evaluate_sweep" not in sharded
    assert {k: v for k, v in sharded.items() if k not in ("evaluate_sweep_shard", "merge_sweep")} == \
        {k: v for k, v in today.items() if k != "evaluate_sweep"}
    assert "results/tiny/eval/seeds_crf/cam/cam/shards/shard-1-of-2.npz" in output
