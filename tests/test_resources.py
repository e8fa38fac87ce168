"""What the SLURM profile would submit (a dry run, no cluster needed): every job declares memory and
runtime, GPU requests follow `gpu_available`, inference stages fan out as one job per shard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .workflow_helpers import ROOT, snakemake, tiny_config, write_config

GPU_RULES = {"train_classifier", "train_relation", "train_segmentation", "train_weight_map"}  # and AdvCAM's shards


def planned(workdir: Path, gpu_available: bool, shards: int) -> list[dict]:
    """One dict per job of a dry run with the SLURM profile: rule, threads, resources."""
    config = tiny_config(gpu_available=gpu_available, shards=shards,
                         seeds={"cam": {"method": "cam"}, "advcam": {"method": "advcam"}},
                         experiments=[{"classifier": "cam", "seeds": "cam"},
                                      {"classifier": "cam", "seeds": "advcam", "pseudo_masks": False}],
                         classifiers={"cam": {"variant": "cam", "backbone": "small_resnet"},
                                      "soft": {"variant": "cam", "backbone": "small_resnet", "loss": "softmax"}},
                         weight_maps={"wm": {}},
                         wsol={"experiments": [{"classifier": "soft", "maps": "advcam"},
                                               {"classifier": "soft", "maps": "wm"}]})
    write_config(workdir, config)
    out = snakemake(workdir, "--profile", str(ROOT / "profiles/slurm"), "--dry-run").stdout
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:)", out, flags=re.MULTILINE)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        threads = re.search(r"^\s+threads: (\d+)", block, re.MULTILINE)
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
        jobs.append({
            "rule": rule, "threads": int(threads.group(1)) if threads else 1,
            "resources": dict(kv.split("=", 1) for kv in resources.group(1).split(", ")) if resources else {},
            "wildcards": wildcards.group(1) if wildcards else "",
        })
    return [job for job in jobs if job["rule"] != "all"]


@pytest.mark.parametrize("gpu_available", [True, False])
def test_every_job_is_sized_and_gpus_follow_the_config(tmp_path: Path, gpu_available: bool) -> None:
    jobs = planned(tmp_path, gpu_available, shards=3)
    assert {job["rule"] for job in jobs} >= GPU_RULES | {"seeds_shard", "random_walk_shard", "summary"}
    for job in jobs:
        resources = job["resources"]
        assert int(resources["mem_mb"]) > 0 and int(resources["runtime"]) > 0, job
        advcam = (job["rule"] == "seeds_shard" and "seeds=advcam" in job["wildcards"]
                  or job["rule"] == "wsol_seeds_shard" and "entry=advcam" in job["wildcards"])
        wants_gpu = gpu_available and (job["rule"] in GPU_RULES or advcam)
        assert int(resources.get("gpu", 0)) == int(wants_gpu), job
    # One job per shard for every inference stage and experiment, one merge of each stage's shards.
    count = {rule: sum(job["rule"] == rule for job in jobs) for rule in
             ["seeds_shard", "affinity_labels_shard", "random_walk_shard", "segment_shard"]}
    assert count == {"seeds_shard": 6, "affinity_labels_shard": 3, "random_walk_shard": 3, "segment_shard": 3}
    merges = [job["wildcards"] for job in jobs if job["rule"] == "merge_maps"]
    merged = {stage: sum(f"map_stage={stage}," in w for w in merges)
              for stage in ["seeds", "affinity_labels", "random_walk", "segmentation"]}
    assert merged == {"seeds": 2, "affinity_labels": 1, "random_walk": 1, "segmentation": 1}
    wsol = {stage: sum(f"map_stage={stage}," in w for w in merges) for stage in ["wsol_calibration", "wsol_evaluation"]}
    assert wsol == {"wsol_calibration": 1, "wsol_evaluation": 2}  # the weight map's threshold is fixed
    assert sum(job["rule"] == "wsol_seeds_shard" for job in jobs) == 6
    assert len(merges) == 8
