"""Killed jobs: snakemake runs the tiny workflow, a job is SIGKILLed mid-way, the same command is run
again. Training resumes from its last checkpoint and ends with the same weights and metrics as an
uninterrupted run; a killed inference shard leaves no file that snakemake or the merge accepts.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil
import torch

from .workflow_helpers import (
    ENV,
    SNAKEMAKE,
    assert_same_maps,
    assert_same_weights,
    snakemake,
    tiny_config,
    write_config,
)

SEEDS = "results/tiny/seeds/cam/advcam"
CLASSIFIER = "results/tiny/classifier/cam"
# AdvCAM (a few climbing steps) makes a shard last long enough to be killed half-way.
CONFIG = tiny_config(
    classifiers={"cam": {"variant": "cam", "backbone": "small_resnet", "epochs": 6, "batch_size": 8,
                         "resize_long": [48, 80], "crop": 64, "output_stride": 8, "checkpoint_every": 1}},
    seeds={"advcam": {"method": "advcam", "scales": [1.0], "flip": False, "steps": 8}},
    experiments=[{"classifier": "cam", "seeds": "advcam", "pseudo_masks": False}],
    shards=2,
)
TARGET = f"{SEEDS}/maps.h5"


def start(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", TARGET],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def run_and_kill(workdir: Path, step: str, ready: Callable[[], bool], timeout: float = 300) -> str:
    """Runs snakemake towards TARGET and SIGKILLs the job whose command line holds `step` once
    `ready()`; the output. Snakemake sees the job fail and stops."""
    process = start(workdir)
    killed = None
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if killed is None and ready():
                for child in psutil.Process(process.pid).children(recursive=True):
                    try:
                        if step in " ".join(child.cmdline()):
                            child.send_signal(signal.SIGKILL)
                            killed = child.pid
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.02)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert killed is not None, f"{step} finished before it could be killed:\n{out[-3000:]}"
    assert process.returncode != 0, out[-3000:]
    return out


def images_done(log: Path) -> int:
    """Images a shard reports done so far (its tqdm progress in the job's log)."""
    counts = re.findall(r"\| *(\d+)/\d+ \[", log.read_text()) if log.exists() else []
    return int(counts[-1]) if counts else 0


def test_killed_jobs_resume_to_the_same_numbers(tmp_path: Path) -> None:
    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    write_config(uninterrupted, CONFIG)
    reference = start(uninterrupted)  # runs meanwhile
    try:
        check_interrupted_run(tmp_path / "interrupted", uninterrupted, reference)
    finally:
        if reference.poll() is None:
            reference.kill()


def check_interrupted_run(workdir: Path, uninterrupted: Path, reference: subprocess.Popen) -> None:
    workdir.mkdir()
    write_config(workdir, CONFIG)
    checkpoint = workdir / CLASSIFIER / "checkpoints" / "last.pt"

    # 1. Training is killed once its first checkpoint exists.
    run_and_kill(workdir, "wsss_steps.train_classifier", checkpoint.exists)
    assert not (workdir / CLASSIFIER / "model.pt").exists()
    killed_after = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 1 <= killed_after < CONFIG["classifiers"]["cam"]["epochs"]

    # 2. The rerun resumes training from there; then a seed shard is killed half-way.
    partial = workdir / SEEDS / "shards" / "shard-0-of-2.h5.partial"
    shard_log = workdir / "logs/tiny/seeds_cam_advcam_shard-0-of-2.log"
    run_and_kill(workdir, "wsss_steps.seeds --classifier results/tiny/classifier/cam/model.pt "
                 "--manifest results/tiny/data/train.csv --shard 0 ", lambda: images_done(shard_log) >= 1)
    log = (workdir / "logs/tiny/train_classifier_cam.log").read_text()
    assert f"after epoch {killed_after} of 6" in log, log
    shard = workdir / SEEDS / "shards" / "shard-0-of-2.h5"
    assert partial.exists() and not shard.exists()
    # Neither snakemake (the shard is missing, so it is planned again) nor the merge takes it.
    dry = snakemake(workdir, "--cores", "2", "--dry-run", TARGET).stdout
    assert "seeds_shard" in dry and "merge_maps" in dry
    merge = subprocess.run(["python", "-m", "wsss_steps.merge_maps", "--manifest",
                            str(workdir / "results/tiny/data/train.csv"), "--out", str(workdir / "merged.h5"),
                            str(partial), str(workdir / SEEDS / "shards" / "shard-1-of-2.h5")],
                           capture_output=True, text=True, env=ENV, cwd=Path(__file__).parent.parent)
    assert merge.returncode != 0 and "MapStoreError" in merge.stderr, merge.stderr
    assert not (workdir / "merged.h5").exists()

    # 3. The same command finishes the work: the same numbers as the uninterrupted run.
    snakemake(workdir, "--cores", "2", TARGET)
    print("\nrerun of the killed shard:", shard_log.read_text().strip().splitlines()[-1].split(": ", 1)[-1])
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-3000:]
    assert_same_weights(workdir / CLASSIFIER / "model.pt", uninterrupted / CLASSIFIER / "model.pt")
    pd.testing.assert_frame_equal(pd.read_csv(workdir / CLASSIFIER / "metrics.csv").drop(columns="seconds"),
                                  pd.read_csv(uninterrupted / CLASSIFIER / "metrics.csv").drop(columns="seconds"),
                                  check_exact=True)
    assert_same_maps(workdir / TARGET, uninterrupted / TARGET)
    print(f"classifier killed after epoch {killed_after}, resumed: weights, metrics and seed maps bitwise equal")
