"""The files each job reads (wsss_steps.workflow.inputs), on a small validated config: which
manifests, models and maps a network's training or a stage's merge takes."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from wsss_steps.workflow import inputs
from wsss_steps.workflow.startup import load_run_configs

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schemas" / "config.schema.yaml"
SMALL: dict[str, Any] = {
    "dataset": {"name": "tiny", "kind": "generated", "root": "data/tiny", "train_split": "train",
                "val_split": "val", "generator": {"num_train": 24, "num_val": 12, "num_classes": 3, "seed": 1}},
    "classifiers": {"cam": {"variant": "cam", "backbone": "small_resnet"},
                    "p_noc": {"variant": "p_noc", "ordinary": "cam", "backbone": "small_resnet"},
                    "cam_softmax": {"variant": "cam", "loss": "softmax", "backbone": "small_resnet"}},
    "seeds": {"cam": {"method": "cam"},
              "advcam_sal": {"method": "advcam_sal", "saliency": "c2am_h"},
              "cam_sal": {"method": "saliency_background", "seeds": "cam", "saliency": "refined"}},
    "saliency": {"c2am_h": {"method": "c2am_h", "classifier": "cam", "seeds": "cam"},
                 "refined": {"method": "refined", "source": "c2am_h"}},
    "experiments": [
        {"classifier": "cam", "seeds": "cam"},
        {"classifier": "cam", "seeds": "full"},
        {"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt", "method": "cct"}},
        {"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt", "method": "cct",
                                                               "weak_labels": False}},
        {"classifier": "cam", "seeds": "cam_sal"},
    ],
    "wsol": {"experiments": [{"classifier": "cam_softmax", "maps": "cam"},
                             {"classifier": "cam_softmax", "maps": "weight_map"}]},
    "weight_maps": {"weight_map": {"box_threshold": 0.1}},
    "evaluation": {}, "pseudo_masks": {}, "segmentation": {"init_from_classifier": True},
}
BASE = "results/tiny"


@pytest.fixture()
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The small config, validated (schema defaults in), in an empty run folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gt.txt").write_text("train_000001\n")
    return load_run_configs(copy.deepcopy(SMALL), SCHEMA_PATH)["tiny"]


def job(**wildcards: str) -> SimpleNamespace:
    return SimpleNamespace(dataset="tiny", **wildcards)


def test_classifiers_read_their_splits_and_the_ordinary_classifiers_model(config: dict[str, Any]) -> None:
    assert inputs.classifier_inputs(config, job(classifier="cam")) == {
        "train": f"{BASE}/data/train.csv", "val": f"{BASE}/data/val.csv"}
    # P-NOC's adversary starts from another entry's trained model.
    assert inputs.classifier_inputs(config, job(classifier="p_noc"))["ordinary"] == f"{BASE}/classifier/cam/model.pt"
    # A softmax (WSOL) classifier trains on the single-class WSOL images.
    assert inputs.classifier_inputs(config, job(classifier="cam_softmax")) == {
        "train": f"{BASE}/wsol_data/train.csv", "val": f"{BASE}/wsol_data/val.csv"}


def test_seeds_and_saliency_read_the_entries_they_name(config: dict[str, Any]) -> None:
    assert inputs.seed_inputs(config, job(seeds="cam")) == {}
    assert inputs.seed_inputs(config, job(seeds="advcam_sal")) == {"saliency": f"{BASE}/saliency/c2am_h/maps.h5"}
    assert inputs.saliency_background_inputs(config, job(classifier="cam", seeds="cam_sal")) == {
        "seeds": f"{BASE}/seeds/cam/cam/maps.h5", "saliency": f"{BASE}/saliency/refined/maps.h5"}
    assert inputs.saliency_train_inputs(config, job(saliency="c2am_h")) == {
        "manifest": f"{BASE}/data/train.csv", "hints": f"{BASE}/seeds/cam/cam/maps.h5"}
    assert inputs.saliency_train_inputs(config, job(saliency="refined")) == {
        "manifest": f"{BASE}/data/train.csv", "masks": f"{BASE}/saliency/c2am_h/maps.h5"}


def test_segmentation_networks_read_pseudo_masks_only_where_they_train_on_them(config: dict[str, Any]) -> None:
    weak = inputs.segmentation_train_inputs(config, job(classifier="cam", masks="cam"))
    assert weak == {"classifier": f"{BASE}/classifier/cam/model.pt", "masks": f"{BASE}/pseudo_masks/cam/cam/masks.h5"}
    assert "masks" not in inputs.segmentation_train_inputs(config, job(classifier="cam", masks="full"))
    cct = inputs.segmentation_train_inputs(config, job(classifier="cam", masks="cam+gt+cct"))
    assert cct["masks"] == f"{BASE}/pseudo_masks/cam/cam/masks.h5" and cct["ground_truth_subset"] == "gt.txt"
    assert inputs.semi_supervised_method(config, job(classifier="cam", masks="cam+gt+cct"))["method"] == "cct"
    # CCT without weak labels: the subset's masks and unlabelled images, no pseudo masks.
    noweak = inputs.segmentation_train_inputs(config, job(classifier="cam", masks="cam+gt+cct_noweak"))
    assert "masks" not in noweak and noweak["ground_truth_subset"] == "gt.txt"
    assert inputs.semi_supervised_method(config, job(classifier="cam", masks="cam")) == {"method": "mix"}
    assert inputs.masks_seeds(config, job(masks="cam+gt+cct")) == "cam"


def test_map_stages_cover_their_split_in_shard_order(config: dict[str, Any]) -> None:
    def stage(map_stage: str) -> SimpleNamespace:
        return job(map_stage=map_stage, classifier="cam", entry="cam")

    assert inputs.map_stage_manifest(config, stage("random_walk")) == f"{BASE}/data/train.csv"
    assert inputs.map_stage_manifest(config, stage("segmentation")) == f"{BASE}/data/val.csv"
    assert inputs.map_stage_manifest(config, stage("wsol_calibration")) == f"{BASE}/wsol_data/train.csv"
    assert inputs.map_stage_manifest(config, stage("wsol_evaluation")) == f"{BASE}/wsol_data/val.csv"
    assert inputs.shard_files(stage("seeds"), 3) == [
        f"{BASE}/seeds/cam/cam/shards/shard-{i}-of-3.h5" for i in range(3)]
    assert inputs.saliency_shard_files(job(saliency="c2am_h"), 2) == [
        f"{BASE}/saliency/c2am_h/shards/shard-{i}-of-2.h5" for i in range(2)]


def test_wsol_calibrates_a_threshold_for_seeds_and_takes_a_weight_maps_own(config: dict[str, Any]) -> None:
    seeds = inputs.wsol_eval_inputs(config, job(classifier="cam_softmax", entry="cam"))
    assert seeds["calibration_maps"] == f"{BASE}/wsol_calibration/cam_softmax/cam/maps.h5"
    assert seeds["calibration_manifest"] == f"{BASE}/wsol_data/train.csv"
    assert seeds["classifier"] == f"{BASE}/classifier/cam_softmax/model.pt"
    weight_map = job(classifier="cam_softmax", entry="weight_map")
    assert inputs.wsol_threshold(config, weight_map) == "0.1"
    assert "calibration_maps" not in inputs.wsol_eval_inputs(config, weight_map)


def test_each_swept_stage_scores_its_own_maps(config: dict[str, Any]) -> None:
    def maps(stage: str) -> str:
        return inputs.sweep_maps(config, job(sweep_stage=stage, classifier="cam", seeds="cam"))

    assert maps("seeds") == maps("seeds_crf") == f"{BASE}/seeds/cam/cam/maps.h5"
    assert maps("pseudo_masks") == f"{BASE}/random_walk/cam/cam/maps.h5"
    assert maps("pseudo_masks_crf") == f"{BASE}/pseudo_masks/cam/cam/masks.h5"
