"""On a real SLURM cluster: the README's commands run the tiny workflow through `--executor slurm`,
one sbatch job per rule instance (one per shard for inference stages), GPU requests for the rules
that run a network, and the results equal a local run of the same config.

Needs a running cluster (`make test-slurm` starts a one-node one on localhost and sets
WSSS_SLURM_TEST=1 and SLURM_CONF); skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .workflow_helpers import (
    ENV,
    ROOT,
    TINY,
    assert_same_maps,
    assert_same_weights,
    job_counts,
    tiny_config,
    write_config,
)

needs_cluster = pytest.mark.skipif(not os.environ.get("WSSS_SLURM_TEST") or not os.environ.get("SLURM_CONF"),
                                   reason="needs a SLURM cluster: run `make test-slurm`")

# The README's commands ("Running on a cluster"), run verbatim in a checkout-like folder.
DRY_RUN = "snakemake --profile profiles/slurm --configfile my.yaml --dry-run"
RUN = "snakemake --profile profiles/slurm --configfile my.yaml --slurm-status-command squeue --slurm-no-account"
LOCAL = "snakemake --profile profiles/local --configfile my.yaml --cores 2"
# Test-only: poll every few seconds instead of the plugin's 40 s; keep every job's SLURM log.
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs"]
CHECKOUT = ["Snakefile", "config.yaml", "rules", "schemas", "wsss_steps", "envs", "profiles"]
# The tiny workflow on a GPU cluster: training asks for a GPU (the test node has a stand-in one),
# the steps run on the CPU. Memory fits the test node.
# my.yaml is merged into config.yaml, so its saliency entry runs too: sized here for the tiny images
# (config.yaml's epochs are set for 128-px images and would take most of the test's time). The WSOL
# experiments are AdvCAM's (rule wsol_seeds_shard) and the weight map's (method I, as in
# configs/all_methods.yaml); CAM's maps take the same rules as AdvCAM's, and every SLURM job costs a
# snakemake start and a status poll.
SMALL = {"epochs": 2, "batch_size": 8, "resize_long": [48, 80], "crop": 64}
CONFIG = tiny_config(gpu_available=True, device="cpu",
                     experiments=[{"classifier": "cam", "seeds": "cam"}],  # `full` adds no rule the SLURM run lacks
                     resources={"threads": 1, "train_mem_mb": 3000, "infer_mem_mb": 2000,
                                "train_runtime_min": 30, "infer_runtime_min": 20},
                     classifiers={**TINY["classifiers"], "cam_softmax": {"variant": "cam", "loss": "softmax",
                                                                         "backbone": "small_resnet", **SMALL}},
                     saliency={"c2am_h": {**SMALL, "accumulation_steps": 1}},
                     weight_maps={"weight_map": {**SMALL, "backbone": "efficientnet_lite0", "pretrained": True,
                                                 "l1_weight": 1.0, "lr": 1.0e-3, "box_threshold": 0.1}},
                     wsol={"experiments": [{"classifier": "cam_softmax", "maps": "advcam"},
                                           {"classifier": "cam_softmax", "maps": "weight_map"}]})
TRAINING_RULES = {"train_classifier", "train_relation", "train_saliency", "train_segmentation", "train_weight_map"}
# Every rule that runs a network asks for a GPU: training, and inference (CAM's seeds too).
GPU_RULES = TRAINING_RULES | {"seeds_shard", "wsol_seeds_shard", "saliency_shard", "random_walk_shard",
                              "segment_shard", "segment_gallery", "weight_maps_shard", "evaluate_wsol"}
SHARD_RULES = {"seeds_shard", "affinity_labels_shard", "random_walk_shard"}


def readme_cluster_commands() -> list[str]:
    """The command lines of the README section "Running on a cluster" (continuations joined)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        block = re.sub(r"\\\n\s*", "", block)
        lines += [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def local_rules() -> set[str]:
    """The Snakefile's `localrules:`, one name a line."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", (ROOT / "Snakefile").read_text(), re.MULTILINE)
    return set(re.findall(r"\w+", block.group(1)))


def checkout(path: Path) -> Path:
    """A folder that looks like a clone of this repository (links to its files), plus my.yaml."""
    path.mkdir()
    for name in CHECKOUT:
        (path / name).symlink_to(ROOT / name)
    write_config(path, CONFIG, "my.yaml")
    return path


def start(command: str, cwd: Path, *extra: str) -> subprocess.Popen:
    argv = shlex.split(command)
    assert argv[0] == "snakemake"
    return subprocess.Popen([sys.executable, "-m", "snakemake", *argv[1:], *extra], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 900) -> str:
    """Waits for a command started by `start`; its output (stdout and stderr)."""
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, f"{shlex.join(process.args)} failed:\n{out[-8000:]}"
    return out


def run(command: str, cwd: Path, *extra: str, timeout: float = 900) -> str:
    return finish(start(command, cwd, *extra), timeout)


def squeue_jobs(run_id: str) -> pd.DataFrame:
    """Every job of one workflow run as slurmctld keeps it (MinJobAge), whether finished or not."""
    fields = ["JobID", "Comment", "tres-per-job", "State", "NumCPUs", "MinMemory", "TimeLimit"]
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--name", run_id,
                          "-O", ",".join(f"{f}:|" for f in fields)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    rows = [line.rstrip("|").split("|") for line in out.splitlines() if line.strip()]
    jobs = pd.DataFrame([[cell.strip() for cell in row] for row in rows], columns=fields)
    jobs["rule"] = jobs["Comment"].str.extract(r"^rule_(\w+?)(?:_wildcards_.*)?$", expand=False)
    return jobs


def assert_same_results(slurm_dir: Path, local_dir: Path) -> None:
    """Same numbers: summary, training metrics, weights and every map, bit for bit."""
    pd.testing.assert_frame_equal(pd.read_csv(slurm_dir / "results/summary.csv"),
                                  pd.read_csv(local_dir / "results/summary.csv"), check_exact=True)
    for model in ["results/tiny/classifier/cam/model.pt", "results/tiny/relation/cam/cam/model.pt"]:
        metrics = Path(model).with_name("metrics.csv")  # all but the wall-clock column
        pd.testing.assert_frame_equal(pd.read_csv(slurm_dir / metrics).drop(columns="seconds"),
                                      pd.read_csv(local_dir / metrics).drop(columns="seconds"), check_exact=True)
        assert_same_weights(slurm_dir / model, local_dir / model)
    for maps in ["results/tiny/seeds/cam/cam/maps.h5", "results/tiny/random_walk/cam/cam/maps.h5",
                 "results/tiny/pseudo_masks/cam/cam/masks.h5"]:
        assert_same_maps(slurm_dir / maps, local_dir / maps)


def test_local_rules_are_read_from_the_snakefile() -> None:
    """No cluster needed: the jobs the cluster test expects unsubmitted are the Snakefile's localrules."""
    assert {"summary", "report_table", "wsol_images"} <= local_rules()
    assert not local_rules() & (GPU_RULES | SHARD_RULES)


def test_readme_cluster_commands_are_the_ones_run_here() -> None:
    """No cluster needed: the README shows the two commands the cluster test runs, verbatim."""
    commands = readme_cluster_commands()
    assert DRY_RUN in commands and RUN in commands, commands


@needs_cluster
def test_readme_commands_on_a_slurm_cluster(tmp_path: Path) -> None:
    commands = readme_cluster_commands()
    assert DRY_RUN in commands and RUN in commands, commands

    slurm_dir = checkout(tmp_path / "slurm")
    planned = run(DRY_RUN, slurm_dir)
    planned_jobs = job_counts(planned)
    for rule in {"all", *local_rules()} & set(planned_jobs):  # run in snakemake itself, never submitted
        planned_jobs.pop(rule)

    # The local reference runs meanwhile: the SLURM run mostly waits between status checks.
    local_dir = checkout(tmp_path / "local")
    local = start(LOCAL, local_dir)
    began = time.monotonic()
    log = finish(start(RUN, slurm_dir, *FAST_POLL))
    slurm_seconds = time.monotonic() - began
    finish(local)

    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    jobs = squeue_jobs(run_id)
    assert sorted(jobs["JobID"]) == sorted(submitted)
    assert (jobs["State"] == "COMPLETED").all(), jobs
    assert jobs["rule"].value_counts().to_dict() == planned_jobs
    # One job per shard for every inference stage.
    for rule in SHARD_RULES:
        assert planned_jobs[rule] == CONFIG["shards"], rule
    # GPU placement: the rules that run a network ask for one GPU (a gres/gpu request), nothing else does.
    for rule, comment, tres in zip(jobs["rule"], jobs["Comment"], jobs["tres-per-job"], strict=True):
        assert (tres == "gres:gpu:1") == (rule in GPU_RULES), (rule, comment, tres)
    # Threads, memory and runtime from the rules' declarations.
    train = jobs[jobs["rule"] == "train_classifier"].iloc[0]
    assert (train["NumCPUs"], train["MinMemory"], train["TimeLimit"]) == ("1", "3000M", "30:00")
    shard = jobs[jobs["rule"] == "seeds_shard"].iloc[0]
    assert (shard["NumCPUs"], shard["MinMemory"], shard["TimeLimit"]) == ("1", "2000M", "20:00")

    assert_same_results(slurm_dir, local_dir)

    # Nothing left to do: a rerun submits no job.
    assert "has been submitted" not in run(RUN, slurm_dir, *FAST_POLL)
    print(f"\nSLURM run: {len(submitted)} jobs submitted, all COMPLETED, in {slurm_seconds:.0f} s "
          f"({', '.join(f'{rule} {n}' for rule, n in sorted(planned_jobs.items()))}); "
          "results equal the local run")
