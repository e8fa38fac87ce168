"""Only what depends on a change reruns: which jobs a dry run plans after a setting changes.

The run is a stand-in: the tiny dataset and its manifests are made for real, every later output
is created empty, and all are recorded by `snakemake --touch --forceall` (which stores each job's
params, code and inputs as a real run does), so the planning is that of a finished run, in seconds
and without running a step.
What follows from content (a rerun upstream re-creating identical files) needs real outputs: see
docs/reruns.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .workflow_helpers import job_counts, snakemake, tiny_config, write_config

# The tiny workflow with seeds that take a saliency background (scored without a sweep), so a
# threshold change has sweeps it must leave alone.
CONFIG = tiny_config(
    saliency={"c2am_h": {"method": "c2am_h", "classifier": "cam", "seeds": "cam", "backbone": "small_resnet",
                         "pretrained": False, "output_stride": 8, "epochs": 1, "batch_size": 6,
                         "resize_long": [48, 80], "crop": 64, "width": 16, "scales": [1.0]}},
    seeds={"cam": {"method": "cam", "scales": [1.0, 0.5]},
           "cam_sal": {"method": "saliency_background", "seeds": "cam", "saliency": "c2am_h"}},
    experiments=[{"classifier": "cam", "seeds": "cam"},
                 {"classifier": "cam", "seeds": "cam_sal", "segmentation": False}],
)


def changed(**sections: dict) -> dict:
    """CONFIG with keys of some sections replaced (one level deep)."""
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def planned(workdir: Path) -> dict[str, list[dict[str, str]]]:
    """Rule → the wildcards of each job a dry run plans."""
    output = snakemake(workdir, "--dry-run").stdout
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", output, flags=re.MULTILINE):
        rule = re.match(r"(?:local)?rule (\w+):$", block, re.MULTILINE)
        if rule is None:
            continue
        found = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
        wildcards = dict(item.split("=", 1) for item in found.group(1).split(", ")) if found else {}
        jobs.setdefault(rule.group(1), []).append(wildcards)
    assert {rule: len(j) for rule, j in jobs.items()} == job_counts(output)
    return jobs


def sweeps(jobs: dict[str, list[dict[str, str]]]) -> set[tuple[str, str]]:
    """(stage, seeds) of the planned evaluate_sweep jobs."""
    return {(w["sweep_stage"], w["seeds"]) for w in jobs.get("evaluate_sweep", [])}


def make_stand_ins(workdir: Path) -> None:
    """Every output of the workflow not made yet, empty (folders: the outputs without a suffix)."""
    listing = snakemake(workdir, "--summary").stdout
    for line in listing.splitlines():
        name = line.split("\t", 1)[0]
        if "\t" not in line or name == "output_file" or (workdir / name).exists():
            continue
        path = workdir / name
        if not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


@pytest.fixture(scope="module")
def touched_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    workdir = tmp_path_factory.mktemp("reruns")
    write_config(workdir, CONFIG)
    # The dataset and its manifests for real (seconds): the workflow checks them when it starts.
    snakemake(workdir, "--cores", "1", "results/tiny/data/train.csv", "results/tiny/data/val.csv")
    make_stand_ins(workdir)
    snakemake(workdir, "--touch", "--forceall", "--cores", "1")
    assert planned(workdir) == {}
    yield workdir


@pytest.fixture
def run(touched_run: Path) -> Iterator[Path]:
    """The stand-in run; each test's config changes are undone (nothing is recorded by a dry run)."""
    yield touched_run
    write_config(touched_run, CONFIG)


def test_seed_thresholds_rerun_only_the_seeds_sweeps(run: Path) -> None:
    config = changed(evaluation={"seeds": {**CONFIG["evaluation"]["seeds"], "thresholds": [0.1, 0.6, 0.1]}})
    write_config(run, config)
    jobs = planned(run)
    # not seeds_crf (crf_thresholds), not the seeds with a saliency background (no sweep)
    assert sweeps(jobs) == {("seeds", "cam")}
    assert "pseudo_masks" not in jobs and "train_segmentation" not in jobs


def test_crf_thresholds_rerun_only_the_seeds_crf_sweep(run: Path) -> None:
    config = changed(evaluation={"seeds": {**CONFIG["evaluation"]["seeds"], "crf_thresholds": [0.2, 0.6, 0.2]}})
    write_config(run, config)
    assert sweeps(planned(run)) == {("seeds_crf", "cam")}


def test_crf_workers_rerun_nothing(run: Path) -> None:
    """The dCRF sweep's worker count changes how fast it runs, not its scores."""
    write_config(run, changed(evaluation={"seeds": {**CONFIG["evaluation"]["seeds"], "crf_workers": 2}}))
    assert planned(run) == {}


def test_pseudo_mask_evaluation_reruns_only_its_sweeps(run: Path) -> None:
    write_config(run, changed(evaluation={"pseudo_masks": {"thresholds": [0.1, 0.7, 0.1]}}))
    jobs = planned(run)
    assert sweeps(jobs) == {("pseudo_masks", "cam"), ("pseudo_masks", "cam_sal")}
    assert not {"merge_maps", "pseudo_masks", "train_segmentation"} & set(jobs)


def test_deleted_random_walk_shard_and_an_evaluation_change_rerun_only_the_evaluation(run: Path) -> None:
    """A deleted intermediate file is made again only where a job that needs it reruns: one
    random-walk shard (the merged maps are there) is not."""
    shard = run / "results/tiny/random_walk/cam/cam/shards/shard-0-of-2.h5"
    shard.rename(shard.with_name("kept.h5"))
    try:
        write_config(run, changed(evaluation={"pseudo_masks": {"thresholds": [0.1, 0.7, 0.1]}}))
        jobs = planned(run)
    finally:
        shard.with_name("kept.h5").rename(shard)
    assert not {"random_walk_shard", "merge_maps", "pseudo_masks", "train_segmentation"} & set(jobs)
    assert sweeps(jobs) == {("pseudo_masks", "cam"), ("pseudo_masks", "cam_sal")}


def test_unused_pseudo_mask_crf_settings_rerun_nothing(run: Path) -> None:
    """Without dCRF, the pseudo masks' crf_iterations and crf_gt_prob are unused."""
    try:
        write_config(run, changed(pseudo_masks={"crf": False}))
        snakemake(run, "--touch", "--cores", "1")  # record the run without dCRF
        write_config(run, changed(pseudo_masks={"crf": False, "crf_iterations": 5, "crf_gt_prob": 0.8}))
        assert planned(run) == {}
        write_config(run, CONFIG)
        assert "pseudo_masks" in planned(run)  # back to dCRF: a setting the command uses
    finally:
        write_config(run, CONFIG)
        snakemake(run, "--touch", "--cores", "1")
    assert planned(run) == {}


def test_data_workers_rerun_nothing(run: Path) -> None:
    """The weights do not depend on the worker count: a change of it retrains nothing."""
    write_config(run, changed(resources={**CONFIG.get("resources", {}), "data_workers": 2}))
    assert planned(run) == {}


def test_precision_retrains(run: Path) -> None:
    write_config(run, {**CONFIG, "precision": "bf16"})
    jobs = planned(run)
    assert {"train_classifier", "train_segmentation"} <= set(jobs)
