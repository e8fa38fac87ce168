"""End to end: snakemake itself runs the workflow on a tiny generated dataset; reruns are minimal."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

from .workflow_helpers import ENV, SNAKEMAKE, TINY, snakemake, write_config


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Rule → job count of a dry run (snakemake's job stats table)."""
    out = snakemake(workdir, "--dry-run", "--quiet", "rules").stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.MULTILINE)
            if m.group(1) != "total"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    write_config(workdir, TINY)
    snakemake(workdir, "--cores", "2")
    return workdir


def test_summary_has_contract_rows(finished_run: Path) -> None:
    summary = pd.read_csv(finished_run / "results" / "summary.csv")
    assert {"dataset", "stage", "method", "split", "metric", "value"} <= set(summary.columns)
    mious = summary[summary.metric == "miou"].set_index("stage")["value"]
    assert set(mious.index) == {"seeds", "seeds_crf", "pseudo_masks", "pseudo_masks_crf"}
    assert ((mious > 0) & (mious <= 1)).all()
    assert (summary[(summary.stage == "classifier") & (summary.metric == "map")]["value"] > 0).all()


def test_seed_maps_hold_every_train_image(finished_run: Path) -> None:
    ids = (finished_run / "data/tiny/ImageSets/Segmentation/train.txt").read_text().split()
    with h5py.File(finished_run / "results/tiny/seeds/cam/cam/maps.h5", "r") as maps:
        assert sorted(maps) == sorted(ids)
        assert maps.attrs["method"] == "cam" and maps.attrs["complete"]
        group = maps[ids[0]]
        assert group["cam"].shape[1:] == (64, 64) and group["cam_stride4"].shape[1:] == (16, 16)
        assert group["cam"].shape[0] == len(group["keys"]) > 0


def test_nothing_to_do_after_a_complete_run(finished_run: Path) -> None:
    assert planned_jobs(finished_run) == {}


def test_evaluation_setting_reruns_only_evaluation(finished_run: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["evaluation"]["seeds"]["thresholds"] = [0.1, 0.6, 0.1]
    write_config(finished_run, config)
    try:
        assert planned_jobs(finished_run) == {"evaluate_seeds": 2, "summary": 1, "all": 1}
    finally:
        write_config(finished_run, TINY)


def test_classifier_setting_reruns_classifier_and_what_follows(finished_run: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["classifiers"]["cam"]["epochs"] = 3
    write_config(finished_run, config)
    try:
        jobs = planned_jobs(finished_run)
    finally:
        write_config(finished_run, TINY)
    assert jobs == {"train_classifier": 1, "seeds_shard": 2, "merge_seeds": 1, "evaluate_seeds": 2,
                    "affinity_labels_shard": 2, "merge_affinity_labels": 1, "train_relation": 1,
                    "random_walk_shard": 2, "merge_random_walk": 1, "pseudo_masks": 1,
                    "evaluate_pseudo_masks": 1, "evaluate_pseudo_masks_crf": 1, "summary": 1, "all": 1}


def test_unknown_config_key_fails_before_any_job(tmp_path: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["evaluation"]["seeds"]["treshold"] = 0.3
    write_config(tmp_path, config)
    result = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "1"], capture_output=True,
                            text=True, timeout=300, env=ENV)
    assert result.returncode != 0
    assert "unknown config key 'evaluation.seeds.treshold'" in result.stderr + result.stdout
    assert "allowed keys here: crf, crf_thresholds, crf_workers, thresholds" in result.stderr + result.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
