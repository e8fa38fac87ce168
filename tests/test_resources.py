"""What the SLURM profile would submit (a dry run, no cluster needed): every job declares memory and
runtime, every rule that runs a network asks for a GPU when `gpu_available` and then runs on
`--device cuda`, partitions follow `resources.gpu_partition` / `cpu_partition`, inference stages
fan out as one job per shard, and a retried job gets more time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from wsss_steps.workflow.options import job_device, partition, runtime_per_attempt

from .workflow_helpers import ROOT, snakemake, tiny_config, write_config

# Every rule that runs a network: training, and the inference of seeds (CAM's too), saliency maps,
# the random walk, segmentation, weight maps and WSOL's Top-1 Loc.
GPU_RULES = {"train_classifier", "train_relation", "train_segmentation", "train_weight_map", "train_saliency",
             "saliency_shard",
             "seeds_shard", "wsol_seeds_shard", "random_walk_shard", "segment_shard", "segment_gallery",
             "weight_maps_shard", "evaluate_wsol"}


def planned(workdir: Path, gpu_available: bool, shards: int, **changes: object) -> list[dict]:
    """One dict per job of a dry run with the SLURM profile: rule, threads, resources, shell command."""
    config = tiny_config(gpu_available=gpu_available, shards=shards, **changes,
                         seeds={"cam": {"method": "cam"}, "advcam": {"method": "advcam"}},
                         experiments=[{"classifier": "cam", "seeds": "cam"},
                                      {"classifier": "cam", "seeds": "advcam", "pseudo_masks": False}],
                         classifiers={"cam": {"variant": "cam", "backbone": "small_resnet"},
                                      "soft": {"variant": "cam", "backbone": "small_resnet", "loss": "softmax"}},
                         weight_maps={"wm": {}},
                         saliency={"c2am_h": {"method": "c2am_h", "classifier": "cam", "seeds": "cam"}},
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
        shell = re.search(r"^Shell command: (.*)$", block, re.MULTILINE)
        jobs.append({
            "rule": rule, "threads": int(threads.group(1)) if threads else 1,
            "resources": dict(kv.split("=", 1) for kv in resources.group(1).split(", ")) if resources else {},
            "wildcards": wildcards.group(1) if wildcards else "",
            "shell": shell.group(1) if shell else "",
        })
    return [job for job in jobs if job["rule"] != "all"]


@pytest.mark.parametrize("gpu_available", [True, False])
def test_every_job_is_sized_and_gpus_follow_the_config(tmp_path: Path, gpu_available: bool) -> None:
    jobs = planned(tmp_path, gpu_available, shards=3)
    assert {job["rule"] for job in jobs} >= GPU_RULES | {"seeds_shard", "random_walk_shard", "summary"}
    assert {job["rule"] for job in jobs} >= GPU_RULES
    for job in jobs:
        resources = job["resources"]
        assert int(resources["mem_mb"]) > 0 and int(resources["runtime"]) > 0, job
        wants_gpu = gpu_available and job["rule"] in GPU_RULES
        assert int(resources.get("gpu", 0)) == int(wants_gpu), job
        # A job given a GPU runs on it or fails at its start; the config's `auto` elsewhere.
        devices = re.findall(r"--device (\S+)", job["shell"])
        assert devices == ([] if job["rule"] not in GPU_RULES else ["cuda" if gpu_available else "auto"]), job
        # No partition in the config: the profile's default-resources (empty: the cluster's default).
        assert resources["slurm_partition"] == "", job
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


def test_partitions_follow_the_gpu_request(tmp_path: Path) -> None:
    jobs = planned(tmp_path, True, shards=1, resources={"gpu_partition": "gpu-a100", "cpu_partition": "short"})
    for job in jobs:
        expected = "gpu-a100" if job["rule"] in GPU_RULES else "short"
        assert job["resources"]["slurm_partition"] == expected, job
    # Without GPUs every job goes to the CPU partition, and an empty key sets none.
    assert partition({"gpu_partition": "gpu", "cpu_partition": "short"}, 0) == {"slurm_partition": "short"}
    assert partition({"gpu_partition": "gpu", "cpu_partition": ""}, 0) == {}
    assert partition({"gpu_partition": "gpu", "cpu_partition": ""}, 1) == {"slurm_partition": "gpu"}


def test_a_configured_partition_wins_over_the_profile_default(tmp_path: Path) -> None:
    """The command line's --default-resources partition applies only to the jobs the config names
    none for."""
    config = tiny_config(gpu_available=True, shards=1, resources={"gpu_partition": "gpu"})
    write_config(tmp_path, config)
    out = snakemake(tmp_path, "--profile", str(ROOT / "profiles/slurm"), "--dry-run",
                    "--default-resources", "slurm_partition=general").stdout
    partitions = dict(re.findall(r"^rule (\w+):.*?slurm_partition=([\w-]*)", out, re.MULTILINE | re.DOTALL))
    assert partitions["train_classifier"] == "gpu" and partitions["segment_shard"] == "gpu"
    assert partitions["prepare_data"] == "general" and partitions["merge_maps"] == "general"


def test_gpu_jobs_run_on_cuda_only_where_the_config_leaves_the_choice() -> None:
    assert job_device("auto", 1) == "cuda"
    assert job_device("auto", 0) == "auto"
    assert job_device("auto", False) == "auto"
    # An explicit device is passed as given (a test cluster's stand-in GPU with device: cpu).
    assert job_device("cpu", 1) == "cpu"
    assert job_device("cuda:1", 1) == "cuda:1"
    assert job_device("cuda", 0) == "cuda"


def test_a_retried_job_gets_its_runtime_times_the_attempt() -> None:
    runtime = runtime_per_attempt(240)
    assert [runtime(None, attempt) for attempt in (1, 2, 3)] == [240, 480, 720]
    by_dataset = runtime_per_attempt(lambda w: 240 if w == "coco" else 60)
    assert (by_dataset("coco", 2), by_dataset("voc", 1), by_dataset("voc", 2)) == (480, 60, 120)


def test_every_rule_declares_an_attempt_dependent_runtime_and_the_profile_retries() -> None:
    """Every rule's runtime goes through runtime_per_attempt (a plain number would give a job
    killed at its time limit the same limit again), and the SLURM profile retries failed jobs."""
    for path in sorted((ROOT / "rules").glob("*.smk")):
        for line in path.read_text().splitlines():
            if line.strip().startswith("runtime="):
                assert line.strip().startswith("runtime=opts.runtime_per_attempt("), (path.name, line)
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["retries"] >= 1
