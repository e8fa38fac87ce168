"""End to end: snakemake itself runs the workflow on a tiny generated dataset; reruns are minimal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from .workflow_helpers import (
    ENV,
    ROOT,
    SNAKEMAKE,
    TINY,
    job_counts,
    snakemake,
    tiny_config,
    write_config,
)


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Rule → job count of a dry run (snakemake's job stats table)."""
    return job_counts(snakemake(workdir, "--dry-run", "--quiet", "rules").stdout)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    write_config(workdir, TINY)
    snakemake(workdir, "--cores", "2")
    return workdir


def test_summary_has_contract_rows(finished_run: Path) -> None:
    summary = pd.read_csv(finished_run / "results" / "summary.csv")
    assert {"dataset", "stage", "method", "split", "metric", "value"} <= set(summary.columns)
    mious = summary[summary.metric == "miou"].set_index(["method", "stage"])["value"]
    weak = {"seeds", "seeds_crf", "pseudo_masks", "pseudo_masks_crf", "segmentation", "segmentation_crf"}
    assert set(mious.index) == {("cam", s) for s in weak} | {("full", "segmentation"), ("full", "segmentation_crf")}
    assert ((mious > 0) & (mious <= 1)).all()
    splits = summary[summary.stage.str.startswith("segmentation")]["split"]
    assert set(splits) == {"val"}
    assert (summary[(summary.stage == "classifier") & (summary.metric == "map")]["value"] > 0).all()


def test_seed_maps_hold_every_train_image(finished_run: Path) -> None:
    ids = (finished_run / "data/tiny/ImageSets/Segmentation/train.txt").read_text().split()
    with h5py.File(finished_run / "results/tiny/seeds/cam/cam/maps.h5", "r") as maps:
        assert sorted(maps) == sorted(ids)
        assert maps.attrs["method"] == "cam" and maps.attrs["complete"]
        group = maps[ids[0]]
        assert group["cam"].shape[1:] == (64, 64) and group["cam_stride4"].shape[1:] == (16, 16)
        assert group["cam"].shape[0] == len(group["keys"]) > 0


def test_segmentation_outputs_and_report(finished_run: Path) -> None:
    val_ids = (finished_run / "data/tiny/ImageSets/Segmentation/val.txt").read_text().split()
    train_ids = (finished_run / "data/tiny/ImageSets/Segmentation/train.txt").read_text().split()
    for method in ("cam", "full"):
        folder = finished_run / "results/tiny/segmentation/cam" / method
        assert sorted(p.stem for p in (folder / "png_crf").glob("*.png")) == sorted(val_ids)
        with h5py.File(folder / "maps.h5", "r") as predictions:
            assert sorted(predictions) == sorted(val_ids) and predictions.attrs["complete"]
        # The report gallery's images of the seed (train) split, segmented by segment_gallery.
        with h5py.File(folder / "gallery.h5", "r") as gallery:
            assert len(gallery) == TINY["report"]["gallery_images"] and set(gallery) <= set(train_ids)
    report_dir = finished_run / "results/tiny/report"
    assert (report_dir / "stages.html").read_text().count("<tr>") == 3
    assert {p.name for p in (report_dir / "cam/cam").iterdir()} == {"sweep.png", "per_class.png", "gallery.png"}
    assert {p.name for p in (report_dir / "cam/full").iterdir()} == {"per_class.png", "gallery.png"}
    snakemake(finished_run, "--report", "report.html")
    page = (finished_run / "report.html").read_text()
    assert "gallery.png" in page and "stages.html" in page and "Stage-by-stage mIoU" in page


def test_nothing_to_do_after_a_complete_run(finished_run: Path) -> None:
    assert planned_jobs(finished_run) == {}


def test_reordered_config_keys_rerun_nothing(finished_run: Path) -> None:
    def reversed_keys(value: object) -> object:
        if isinstance(value, dict):
            return {key: reversed_keys(value[key]) for key in reversed(list(value))}
        return value

    (finished_run / "config.yaml").write_text(yaml.safe_dump(reversed_keys(TINY), sort_keys=False))
    try:
        assert planned_jobs(finished_run) == {}
    finally:
        write_config(finished_run, TINY)


def test_evaluation_setting_reruns_only_evaluation(finished_run: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["evaluation"]["seeds"]["thresholds"] = [0.1, 0.6, 0.1]
    write_config(finished_run, config)
    try:
        # The seeds' sweep (not seeds_crf's: crf_thresholds) changes the report's sweep, bars,
        # gallery (best threshold) and table.
        assert planned_jobs(finished_run) == {"evaluate_sweep": 1, "summary": 1, "report_table": 1,
                                              "report_sweep": 1, "report_per_class": 1, "report_gallery": 1,
                                              "report_seeds_precision_recall": 1, "all": 1}
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
    # merge_maps: seeds, affinity labels, random walk, and both networks' val predictions;
    # evaluate_sweep: seeds, seeds_crf, pseudo_masks, pseudo_masks_crf.
    assert jobs == {"train_classifier": 1, "seeds_shard": 2, "merge_maps": 5, "evaluate_sweep": 4,
                    "affinity_labels_shard": 2, "train_relation": 1, "random_walk_shard": 2,
                    "pseudo_masks": 1, "summary": 1, "all": 1,
                    # both segmentation networks start from the classifier (cam and full)
                    "train_segmentation": 2, "segment_shard": 4, "segment_gallery": 2,
                    "evaluate_segmentation": 4, "export_segmentation_png": 4, "report_table": 1,
                    "report_sweep": 1, "report_per_class": 2, "report_gallery": 2,
                    "report_seeds_precision_recall": 1}


def test_inference_setting_reruns_only_inference(finished_run: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["segmentation"]["test_scales"] = [1.0, 0.5]
    write_config(finished_run, config)
    try:
        jobs = planned_jobs(finished_run)
    finally:
        write_config(finished_run, TINY)
    assert "train_segmentation" not in jobs
    assert jobs["segment_shard"] == 4 and jobs["evaluate_segmentation"] == 4
    assert jobs["segment_gallery"] == 2 and jobs["report_gallery"] == 2


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


def test_missing_weights_file_fails_before_any_job(tmp_path: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["relation"].update(backbone="resnet50", backbone_weights="weights/resnet50-imagenet.pth")
    write_config(tmp_path, config)
    result = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "1"], capture_output=True,
                            text=True, timeout=300, env=ENV)
    assert result.returncode != 0
    assert ("relation.backbone_weights: file not found: weights/resnet50-imagenet.pth (backbone resnet50)"
            in result.stderr + result.stdout)
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_per_seeds_settings_rerun_only_that_entry_from_its_stage(finished_run: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    shared = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    default_power = shared["properties"]["random_walk"]["properties"]["seed_power"]["default"]
    config["random_walk"] = {"per_seeds": {"cam": {"seed_power": default_power}}}
    write_config(finished_run, config)
    try:
        assert planned_jobs(finished_run) == {}  # the same effective settings: nothing to redo
        config["random_walk"]["per_seeds"]["cam"]["seed_power"] = 1.5
        write_config(finished_run, config)
        jobs = planned_jobs(finished_run)
    finally:
        write_config(finished_run, TINY)
    assert "train_relation" not in jobs and "affinity_labels_shard" not in jobs
    assert jobs["random_walk_shard"] == 2 and jobs["pseudo_masks"] == 1 and jobs["train_segmentation"] == 1


SALIENCY_NETWORK = {"backbone": "small_resnet", "pretrained": False, "output_stride": 8, "epochs": 1,
                    "batch_size": 6, "accumulation_steps": 2, "resize_long": [48, 80], "crop": 64, "width": 16,
                    "scales": [1.0]}


def variants_and_saliency_config() -> dict:
    """Two classifier variants reading the ordinary CAM classifier; C²AM-H hinted by the CAM seeds, a
    refinement network on its pseudo-saliency masks, CAM seeds with C²AM-H as background through
    affinity labels → random walk → pseudo masks, and AdvCAM-Sal reading the refined entry."""
    config = tiny_config(
        shards=1,  # one job a stage: sharding is tested by the module's run
        keep_shards=False,  # each shard deleted once merged
        saliency={"c2am_h": {"method": "c2am_h", "classifier": "cam", "seeds": "cam", **SALIENCY_NETWORK},
                  "refined": {"method": "refined", "source": "c2am_h", **SALIENCY_NETWORK, "batch_size": 4}},
        seeds={"cam": {"method": "cam", "scales": [1.0]},
               "cam_sal": {"method": "saliency_background", "seeds": "cam", "saliency": "c2am_h"},
               "adv_sal": {"method": "advcam_sal", "saliency": "refined", "scales": [1.0], "steps": 2,
                           "flip": False}},
        experiments=[{"classifier": "cam", "seeds": "cam", "segmentation": False},
                     {"classifier": "cam", "seeds": "cam_sal", "segmentation": False},
                     {"classifier": "cam", "seeds": "adv_sal", "pseudo_masks": False},
                     {"classifier": "p_noc", "seeds": "cam", "pseudo_masks": False},
                     {"classifier": "oc_cse", "seeds": "cam", "pseudo_masks": False}])
    cam = config["classifiers"]["cam"]
    config["classifiers"].update(p_noc={**cam, "variant": "p_noc", "ordinary": "cam"},
                                 oc_cse={**cam, "variant": "oc_cse", "ordinary": "cam", "label_smoothing": 0.1})
    return config


@pytest.fixture(scope="module")
def variants_and_saliency_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """One run for the variant and saliency tests (their shared stages run once); the planned jobs."""
    workdir = tmp_path_factory.mktemp("variants_and_saliency")
    write_config(workdir, variants_and_saliency_config())
    jobs = planned_jobs(workdir)
    snakemake(workdir, "--cores", "2")
    return workdir, jobs


def test_variants_train_their_shared_ordinary_classifier_once(
        variants_and_saliency_run: tuple[Path, dict[str, int]]) -> None:
    workdir, jobs = variants_and_saliency_run
    assert jobs["train_classifier"] == 3  # cam once, though two variants read it
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    seeds = summary[(summary.stage == "seeds") & (summary.metric == "miou")]
    assert set(seeds["classifier"]) == {"cam", "p_noc", "oc_cse"}
    maps = summary[(summary.stage == "classifier") & (summary.metric == "map")].set_index("classifier")["method"]
    assert maps.to_dict() == {"cam": "cam", "p_noc": "p_noc", "oc_cse": "oc_cse"}
    models = workdir / "results" / "tiny" / "classifier"
    ordinary = torch.load(models / "cam" / "model.pt", weights_only=True)["meta"]["settings_hash"]
    for name in ("p_noc", "oc_cse"):
        assert torch.load(models / name / "model.pt", weights_only=True)["meta"]["training"]["ordinary"] == ordinary
    # A change to the ordinary classifier retrains the variants that read it.
    config = variants_and_saliency_config()
    config["classifiers"]["cam"]["epochs"] = 3
    try:
        write_config(workdir, config)
        assert planned_jobs(workdir)["train_classifier"] == 3
    finally:
        write_config(workdir, variants_and_saliency_config())


def test_saliency_entries_feed_seeds_affinity_labels_and_the_summary(
        variants_and_saliency_run: tuple[Path, dict[str, int]]) -> None:
    workdir, jobs = variants_and_saliency_run
    assert jobs["train_saliency"] == 2 and jobs["saliency_seeds"] == 1 and jobs["evaluate_hint_foreground"] == 1
    assert jobs["seeds_shard"] == 4  # cam and adv_sal of cam, cam of each variant; cam_sal takes cam's maps
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    rows = summary[summary.stage == "saliency"].set_index(["method", "metric"])["value"]
    for method in ("c2am_h", "refined", "cam_foreground"):
        assert 0 < rows[(method, "fg_iou")] <= 1 and 0 <= rows[(method, "mae")] <= 1
    assert rows[("c2am_h", "mask_fg_iou")] > 0
    seeds = summary[(summary.stage == "seeds") & (summary.classifier == "cam")].set_index(["method", "metric"])["value"]
    assert ("cam_sal", "miou") in seeds and ("cam_sal", "best_threshold") not in seeds  # no sweep
    assert ("cam", "best_threshold") in seeds
    masks = summary[(summary.stage == "pseudo_masks") & (summary.metric == "miou")].set_index("method")["value"]
    assert set(masks.index) == {"cam", "cam_sal"}
    results = workdir / "results" / "tiny"
    with h5py.File(results / "affinity_labels/cam/cam_sal/maps.h5", "r") as labels:
        assert labels.attrs["method"] == "pnoc_saliency"
    with h5py.File(results / "seeds/cam/adv_sal/maps.h5", "r") as maps:
        params = json.loads(maps.attrs["params"])
        assert params["saliency_threshold"] == 0.1 and params["saliency"]["method"] == "refined"
    with h5py.File(results / "seeds/cam/cam_sal/maps.h5", "r") as derived, \
            h5py.File(results / "seeds/cam/cam/maps.h5", "r") as base:
        image_id = sorted(base)[0]
        assert np.array_equal(derived[image_id]["cam"][()], base[image_id]["cam"][()])
        assert derived[image_id]["saliency"].shape == base[image_id]["cam"].shape[1:]
    assert (results / "report" / "seeds_precision_recall.png").stat().st_size > 0
    # keep_shards: false: every merged stage's shards are gone, their merged files whole.
    assert not list(results.glob("**/shards/*.h5"))
    merged = {p.relative_to(results).parts[0] for p in results.glob("**/maps.h5")}
    assert merged >= {"seeds", "saliency", "affinity_labels", "random_walk"}


def test_wsol_experiments_score_cam_and_the_weight_map(tmp_path: Path) -> None:
    """A softmax classifier on the WSOL images of a generated multi-object dataset, CAM maps with a
    calibrated threshold and the weight map at max/10 → wsol rows, the report's boxes figure."""
    config = tiny_config(
        dataset={**TINY["dataset"], "generator": {**TINY["dataset"]["generator"], "num_train": 36, "num_val": 18}},
        classifiers={**TINY["classifiers"],
                     "soft": {**TINY["classifiers"]["cam"], "loss": "softmax", "lr": 0.01, "epochs": 3}},
        seeds={"cam": {"method": "cam", "scales": [1.0]}},
        weight_maps={"wm": {"pretrained": False, "epochs": 2, "batch_size": 4, "lr": 1.0e-3,
                            "resize_long": [48, 80], "crop": 64},
                     "wm2": {"method": "ii", "embedding_epochs": 1, "pretrained": False, "epochs": 1,
                             "batch_size": 4, "lr": 1.0e-3, "resize_long": [48, 80], "crop": 64}},
        wsol={"experiments": [{"classifier": "soft", "maps": "cam"}, {"classifier": "soft", "maps": "wm"},
                              {"classifier": "soft", "maps": "wm2"}]},
        experiments=[])  # localisation only
    write_config(tmp_path, config)
    jobs = planned_jobs(tmp_path)
    assert jobs["wsol_images"] == 2 and jobs["train_weight_map"] == 2 and jobs["evaluate_wsol"] == 3
    assert jobs["wsol_seeds_shard"] == 4  # calibration and evaluation, 2 shards each
    assert "seeds_shard" not in jobs and jobs["train_classifier"] == 1  # no WSSS experiment
    assert jobs["weight_maps_shard"] == 4  # evaluation only: their threshold is fixed
    snakemake(tmp_path, "--cores", "2")
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    wsol = summary[summary.stage == "wsol"].set_index(["method", "metric"])["value"]
    for method in ("cam", "wm", "wm2"):
        assert 0 <= wsol[(method, "gt_known_loc")] <= wsol[(method, "maxboxacc")] <= 1
        assert 0 <= wsol[(method, "top1_loc")] <= wsol[(method, "gt_known_loc")]
        assert 0 < wsol[(method, "pxap")] <= 1
    assert wsol[("wm", "best_threshold")] == pytest.approx(0.1)
    classifier = summary[(summary.stage == "classifier") & (summary.classifier == "soft")]
    assert "top1_accuracy" in set(classifier.metric)
    results = tmp_path / "results" / "tiny"
    train_ids = pd.read_csv(results / "data" / "train.csv")
    wsol_ids = pd.read_csv(results / "wsol_data" / "train.csv")
    assert set(wsol_ids.image_id) == set(train_ids[~train_ids.label_ids.astype(str).str.contains(" ")].image_id)
    metrics = pd.read_csv(results / "weight_map" / "soft" / "wm" / "metrics.csv")
    assert list(metrics.epoch) == [1, 2] and metrics.val_score.between(0, 1).all()
    method_ii = pd.read_csv(results / "weight_map" / "soft" / "wm2" / "metrics.csv")  # method II's terms
    assert list(method_ii.epoch) == [1] and method_ii.inner.notna().all() and method_ii.ce.isna().all()
    assert (results / "report" / "wsol_boxes.png").stat().st_size > 0
    assert "Localisation" in (results / "report" / "stages.html").read_text()
