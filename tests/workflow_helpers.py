"""Shared by the workflow tests: the tiny config and a way to run snakemake on it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
# Jobs call `python`: this environment's, as after `source .venv/bin/activate`.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

TINY: dict[str, Any] = {
    "dataset": {"name": "tiny", "kind": "generated", "root": "data/tiny",
                "generator": {"num_train": 24, "num_val": 12, "image_size": 64, "num_classes": 3, "seed": 1}},
    "shards": 2,
    "classifiers": {"cam": {"variant": "cam", "backbone": "small_resnet", "epochs": 2, "batch_size": 8,
                            "resize_long": [48, 80], "crop": 64, "output_stride": 8}},
    "seeds": {"cam": {"method": "cam", "scales": [1.0, 0.5]}},
    "experiments": [{"classifier": "cam", "seeds": "cam"}, {"classifier": "cam", "seeds": "full"}],
    "evaluation": {"seeds": {"thresholds": [0.1, 0.5, 0.1], "crf": True, "crf_thresholds": [0.2, 0.4, 0.2],
                             "crf_workers": 1}},
    "relation": {"backbone": "efficientnet_lite0", "epochs": 1, "batch_size": 8, "crop": 64},
    "segmentation": {"head": "deeplabv3plus", "backbone": "small_resnet", "pretrained": False,
                     "init_from_classifier": True, "aspp_rates": [1, 2], "width": 16, "epochs": 1,
                     "batch_size": 8, "lr": 0.01, "resize_long": [48, 80], "crop": 64, "cache_images": True,
                     "test_scales": [1.0]},
    "report": {"gallery_images": 2},
    "resources": {"threads": 1},
}


def tiny_config(**changes: Any) -> dict[str, Any]:
    """A deep copy of TINY with top-level keys replaced."""
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config.update(yaml.safe_load(yaml.safe_dump(changes)))
    return config


def snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs snakemake on this repository's Snakefile in `workdir`; fails the test on an error."""
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                            timeout=timeout, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def with_tiny_manifests(workdir: Path) -> Path:
    """``workdir`` with the tiny config and its dataset's manifests made for real (seconds): the
    workflow checks them when it starts, so a dry run plans from there."""
    write_config(workdir, tiny_config())
    snakemake(workdir, "--cores", "1", "results/tiny/data/train.csv", "results/tiny/data/val.csv")
    return workdir


def write_config(workdir: Path, config: dict, name: str = "config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config))
    return path


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Rule → job count from the job stats table snakemake prints (the total row left out)."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", dry_run_output, re.MULTILINE)
            if m.group(1) != "total"}


def assert_same_weights(a_path: Path, b_path: Path) -> None:
    """Two saved models (``state_dict`` files) with bitwise equal tensors."""
    a = torch.load(a_path, weights_only=True)["state_dict"]
    b = torch.load(b_path, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{a_path} vs {b_path}"


def assert_same_maps(a_path: Path, b_path: Path) -> None:
    """Two map files with the same images and bitwise equal arrays."""
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        assert sorted(a) == sorted(b)
        for image in a:
            assert sorted(a[image]) == sorted(b[image])
            for name in a[image]:
                np.testing.assert_array_equal(a[image][name][()], b[image][name][()],
                                              err_msg=f"{a_path} {image}/{name}")
