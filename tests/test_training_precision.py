"""Opt-in precision and memory format of the trainings, and the worker count: what each changes
(the identity, and so what reruns) and what it does not."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from wsss_steps import train_classifier
from wsss_steps.networks.io import read_classifier_meta
from wsss_steps.workflow.options import precision_options

from .test_train_classifier import _args, manifests  # noqa: F401 (fixture)


def test_bf16_autocast_on_the_cpu_trains_and_is_recorded(manifests, tmp_path: Path) -> None:  # noqa: F811
    for name, extra in (("fp32", ()), ("bf16", ("--precision", "bf16", "--channels-last"))):
        (tmp_path / name).mkdir()
        assert train_classifier.main(_args(manifests, tmp_path / name, 1, *extra)) == 0
    default, bf16 = (read_classifier_meta(tmp_path / name / "model.pt") for name in ("fp32", "bf16"))
    assert "precision" not in default["training"] and "channels_last" not in default["training"]
    assert bf16["training"]["precision"] == "bf16" and bf16["training"]["channels_last"] is True
    assert bf16["settings_hash"] != default["settings_hash"]
    loss = (tmp_path / "bf16" / "metrics.csv").read_text().splitlines()[1].split(",")[3]
    assert math.isfinite(float(loss))
    state = torch.load(tmp_path / "bf16" / "model.pt", weights_only=True)["state_dict"]
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in state.values()
               if t.is_floating_point())


def test_an_unknown_precision_is_refused_by_the_step(manifests, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(SystemExit):
        train_classifier.main(_args(manifests, tmp_path, 1, "--precision", "fp8"))


def test_precision_options_are_empty_at_the_defaults() -> None:
    assert precision_options({"precision": "fp32", "channels_last": False}) == ""
    assert precision_options({"precision": "fp16", "channels_last": True}) == " --precision fp16 --channels-last"


def test_the_worker_count_reaches_the_training_steps_through_the_environment(monkeypatch) -> None:
    """The workflow's shell prefix exports WSSS_DATA_WORKERS (resources.data_workers): every training
    step's --num-workers defaults to it; its command lines stay as they were (no `code` rerun)."""
    from wsss_steps import train_relation, train_saliency, train_segmentation, train_weight_map

    for step in (train_classifier, train_relation, train_saliency, train_segmentation, train_weight_map):
        monkeypatch.setenv("WSSS_DATA_WORKERS", "3")
        assert step.build_parser().get_default("num_workers") == 3, step.__name__
        monkeypatch.delenv("WSSS_DATA_WORKERS")
        assert step.build_parser().get_default("num_workers") == 0, step.__name__
    common = (Path(__file__).resolve().parent.parent / "rules" / "common.smk").read_text()
    assert "export WSSS_DATA_WORKERS={int(RESOURCES['data_workers'])}" in common
    for rules in (Path(__file__).resolve().parent.parent / "rules").glob("*.smk"):
        assert "num-workers" not in rules.read_text(), rules
