"""The steps' options as the rules build them from config sections: quoting, booleans, the
settings each rule's params hold."""

from __future__ import annotations

import shlex

import pytest

from wsss_steps.workflow.options import (
    affinity_settings,
    cli_options,
    cli_value,
    pairs,
    path_option,
    pseudo_mask_settings,
    saliency_background_map,
    saliency_inference,
    saliency_train_options,
    saliency_training,
    seed_options,
    seeds_stage_settings,
    segmentation_inference,
    segmentation_inference_options,
    segmentation_sources,
    segmentation_training,
    sweep_options,
    sweep_threads,
    training_params,
    weight_map_options,
    wsol_calibration_options,
    wsol_threshold,
)


@pytest.mark.parametrize("value, words", [
    ("plain", ["plain"]),
    ("two words", ["two words"]),
    ("$(rm -rf ~); `x` | y > z & 'q' \"d\"", ["$(rm -rf ~); `x` | y > z & 'q' \"d\""]),
    ([96, 160], ["96", "160"]),
    (("a b", "c;d"), ["a b", "c;d"]),
    (0.05, ["0.05"]),
    ("", [""]),
])
def test_values_are_shell_words(value: object, words: list[str]) -> None:
    assert shlex.split(cli_value(value)) == words


def test_a_section_becomes_options_in_its_key_order() -> None:
    settings = {"epochs": 2, "pretrained": True, "flip": False, "backbone_weights": None, "resize_long": [48, 80],
                "root": "my data/x", "checkpoint_every": 1}
    assert cli_options(settings, skip=("checkpoint_every",)) == \
        "--epochs 2 --pretrained --no-flip --resize-long 48 80 --root 'my data/x'"
    assert cli_options({}) == "" and cli_options({"a": None}) == ""
    assert shlex.split(cli_options({"name": "a;b c"})) == ["--name", "a;b c"]


def test_files_are_quoted_options() -> None:
    assert path_option("saliency", "results/a b/maps.h5") == "--saliency 'results/a b/maps.h5'"
    assert path_option("ordinary", None) == ""
    assert shlex.split(pairs({"cam/cam": "x y.csv", "p": "z.csv"})) == ["cam/cam=x y.csv", "p=z.csv"]


def test_training_params_give_the_shared_checkpoint_and_device_arguments() -> None:
    params = training_params("results/{dataset}/classifier/{classifier}", "cuda:1", lambda w: {"checkpoint_every": 3})
    assert params["checkpoints"] == "results/{dataset}/classifier/{classifier}/checkpoints"
    assert params["device"] == "cuda:1" and params["checkpoint_every"](object()) == 3
    assert set(training_params("results/x", "auto")) == {"checkpoints", "device"}  # the weight map: no checkpoint_every


def test_per_seeds_settings_override_the_shared_ones_for_that_entry_only() -> None:
    section = {"beta": 10, "sem_seg_bg_thres": 0.25, "per_seeds": {"advcam": {"sem_seg_bg_thres": 0.4}}}
    assert seeds_stage_settings(section, "advcam") == {"beta": 10, "sem_seg_bg_thres": 0.4}
    assert seeds_stage_settings(section, "cam") == {"beta": 10, "sem_seg_bg_thres": 0.25}
    assert list(seeds_stage_settings({"z": 1, "a": 2, "per_seeds": {}}, "cam")) == ["a", "z"]


def test_affinity_settings_hold_the_thresholds_of_the_rule_used() -> None:
    section = {"conf_fg": 0.3, "conf_bg": 0.05, "sal_fg_threshold": 0.4, "sal_bg_threshold": 0.1, "crf": True,
               "per_seeds": {"cam_sal": {"sal_fg_threshold": 0.5}}}
    assert affinity_settings(section, "cam", saliency_background=False) == {"conf_bg": 0.05, "conf_fg": 0.3,
                                                                            "crf": True}
    assert affinity_settings(section, "cam_sal", saliency_background=True) == {"crf": True, "sal_bg_threshold": 0.1,
                                                                               "sal_fg_threshold": 0.5}


def test_seed_options_add_advcam_sals_saliency_file() -> None:
    settings = {"method": "advcam_sal", "saliency": "c2am", "scales": [1.0, 0.5], "flip": True}
    assert seed_options(settings) == "--method advcam_sal --scales 1.0 0.5 --flip"
    assert seed_options(settings, "results/d/saliency/c2am/maps.h5") == \
        "--method advcam_sal --scales 1.0 0.5 --flip --saliency results/d/saliency/c2am/maps.h5"


def test_the_saliency_background_map_is_p_nocs_by_default() -> None:
    entries = {"c2am": {"method": "c2am"}, "refined": {"method": "refined"}}
    assert saliency_background_map({"saliency": "c2am"}, entries) == "saliency_mask"
    assert saliency_background_map({"saliency": "refined", "saliency_map": "auto"}, entries) == "saliency"
    assert saliency_background_map({"saliency": "c2am", "saliency_map": "map"}, entries) == "saliency"
    assert saliency_background_map({"saliency": "refined", "saliency_map": "mask"}, entries) == "saliency_mask"


def test_saliency_settings_split_into_training_and_inference() -> None:
    settings = {"method": "c2am_h", "classifier": "cam", "seeds": "cam", "epochs": 3, "scales": [1.0], "flip": True,
                "crf": True, "checkpoint_every": 1}
    assert saliency_training(settings) == {"method": "c2am_h", "classifier": "cam", "seeds": "cam", "epochs": 3}
    assert saliency_inference(settings) == {"scales": [1.0], "flip": True, "crf": True}
    assert saliency_train_options(settings, {"manifest": "m.csv", "hints": "h s.h5"}) == \
        "--method c2am_h --epochs 3 --hints 'h s.h5'"
    refined = {"method": "refined", "source": "c2am", "epochs": 1}
    assert saliency_train_options(refined, {"masks": "results/d/saliency/c2am/maps.h5"}) == \
        "--method refined --epochs 1 --masks results/d/saliency/c2am/maps.h5"


def test_the_weight_map_trains_on_its_training_keys_only() -> None:
    settings = {"box_threshold": 0.1, "epochs": 2, "lr": 0.001, "pretrained": True, "margin": None}
    assert weight_map_options(settings) == "--pretrained --epochs 2 --lr 0.001"


def test_seeds_calibrate_the_wsol_threshold_and_weight_maps_bring_theirs() -> None:
    weight_maps = {"weight_map": {"box_threshold": 0.1}}
    assert wsol_threshold("weight_map", weight_maps) == "0.1"
    assert wsol_threshold("cam", weight_maps) == "calibrate"
    assert wsol_calibration_options({"maps": "m.h5"}) == ""
    assert wsol_calibration_options({"calibration_maps": "c m.h5", "calibration_manifest": "c.csv"}) == \
        "--calibration-maps 'c m.h5' --calibration-manifest c.csv"


def test_pseudo_mask_settings_leave_out_unused_dcrf_keys() -> None:
    settings = {"crf": True, "crf_iterations": 1, "crf_gt_prob": 0.9}
    assert pseudo_mask_settings(settings) == settings
    assert pseudo_mask_settings({**settings, "crf": False}) == {"crf": False}


EVALUATION = {"seeds": {"thresholds": [0.1, 0.5, 0.1], "crf_thresholds": [0.05, 0.6, 0.05], "crf_workers": 2},
              "pseudo_masks": {"thresholds": [0.05, 0.8, 0.05]}}


@pytest.mark.parametrize("stage, background, options, threads", [
    ("seeds", False, "--map-name cam --thresholds 0.1 0.5 0.1", 1),
    ("seeds_crf", False, "--map-name cam --thresholds 0.05 0.6 0.05 --crf", 2),
    ("pseudo_masks", False, "--map-name cam --thresholds 0.05 0.8 0.05", 1),
    ("pseudo_masks_crf", False, "--map-name mask_onehot --thresholds 0.3 0.3 1", 1),
    ("seeds", True, "--map-name cam --saliency-background", 1),
    ("seeds_crf", True, "--map-name cam --saliency-background --crf", 1),
    ("pseudo_masks", True, "--map-name cam --thresholds 0.05 0.8 0.05", 1),
])
def test_each_swept_stage_reads_its_own_settings(stage: str, background: bool, options: str, threads: int) -> None:
    assert sweep_options(stage, EVALUATION, background, 0.3) == options
    assert sweep_threads(stage, EVALUATION, background) == threads
    with pytest.raises(ValueError, match="not a swept stage"):
        sweep_options("segmentation", EVALUATION, background, 0.3)


def test_segmentation_settings_split_into_training_and_inference() -> None:
    settings = {"epochs": 2, "lr": 0.01, "test_scales": [1.0, 0.5], "flip": True, "crf": False,
                "init_from_classifier": True, "checkpoint_every": 1}
    assert segmentation_training(settings) == {"epochs": 2, "lr": 0.01}
    assert segmentation_inference(settings) == {"test_scales": [1.0, 0.5], "flip": True, "crf": False}
    assert segmentation_inference_options(settings) == "--scales 1.0 0.5 --flip --no-crf"


def test_segmentation_trains_on_ground_truth_pseudo_masks_or_both() -> None:
    assert segmentation_sources({"manifest": "m.csv"}) == "--ground-truth "
    assert segmentation_sources({"classifier": "c.pt"}) == "--ground-truth --init-classifier c.pt"
    assert segmentation_sources({"masks": "p m.h5", "classifier": "c.pt"}) == "--masks 'p m.h5' --init-classifier c.pt"
    assert segmentation_sources({"masks": "p.h5", "ground_truth_subset": "gt 20.txt"}) == \
        "--masks p.h5 --ground-truth-subset 'gt 20.txt' "
