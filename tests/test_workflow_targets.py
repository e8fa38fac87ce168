"""What a run computes: the experiments' evaluated stages, the summary's rows, the report's files
and the entry names the wildcards take, on the default config and on small ones."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from wsss_steps.workflow.startup import load_run_configs
from wsss_steps.workflow.targets import (
    NEVER,
    alternatives,
    computed_seed_names,
    entry_names,
    experiment_files,
    experiment_stages,
    gallery_inputs,
    has_segmentation,
    hint_seeds,
    named_experiment,
    report_files,
    saliency_background_seed_names,
    seed_experiments,
    seeds_curves,
    semi_supervised,
    semi_supervised_names,
    summary_row_files,
    wsol_box_files,
    wsol_seed_names,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schemas" / "config.schema.yaml"
SEMI = {"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt"}}
SMALL: dict[str, Any] = {
    "dataset": {"name": "tiny", "kind": "generated", "root": "data/tiny",
                "generator": {"num_train": 24, "num_val": 12, "num_classes": 3, "seed": 1}},
    "classifiers": {"cam": {"variant": "cam", "backbone": "small_resnet"},
                    "cam_softmax": {"variant": "cam", "loss": "softmax", "backbone": "small_resnet"}},
    "seeds": {"cam": {"method": "cam"}, "advcam": {"method": "advcam"},
              "cam_sal": {"method": "saliency_background", "seeds": "cam", "saliency": "c2am_h"}},
    "saliency": {"c2am_h": {"method": "c2am_h", "classifier": "cam", "seeds": "advcam"}},
    "experiments": [{"classifier": "cam", "seeds": "cam"},
                    {"classifier": "cam", "seeds": "advcam", "pseudo_masks": False},
                    {"classifier": "cam", "seeds": "full"}, SEMI, {"classifier": "cam", "seeds": "cam_sal"}],
    "wsol": {"experiments": [{"classifier": "cam_softmax", "maps": "advcam"}]},
    "evaluation": {"seeds": {"thresholds": [0.1, 0.5, 0.1], "crf": True}},
    "pseudo_masks": {"crf": False},
    "segmentation": {"crf": True},
}


@pytest.fixture()
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """The small config's run, validated (schema defaults in), in an empty run folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gt.txt").write_text("train_000001\n")
    return load_run_configs(copy.deepcopy(SMALL), SCHEMA_PATH)


def experiment(config: dict[str, Any], seeds: str, semi: bool = False) -> dict[str, Any]:
    return next(e for e in config["experiments"] if e["seeds"] == seeds and bool(semi_supervised({"experiments": [e]}))
                == semi)


def test_each_kind_of_experiment_has_its_stages(run: dict[str, dict[str, Any]]) -> None:
    config = run["tiny"]
    assert experiment_stages(config, experiment(config, "cam")) == [
        "seeds", "seeds_crf", "pseudo_masks", "segmentation", "segmentation_crf"]
    assert experiment_stages(config, experiment(config, "advcam")) == ["seeds", "seeds_crf"]  # no pseudo masks
    assert experiment_stages(config, experiment(config, "full")) == ["segmentation", "segmentation_crf"]
    # Semi-supervised: the weakly supervised experiment's seeds and pseudo masks, its own network.
    assert experiment_stages(config, experiment(config, "cam", semi=True)) == ["segmentation", "segmentation_crf"]
    assert not has_segmentation({"classifier": "cam", "seeds": "cam", "segmentation": False})


def test_the_summary_has_one_row_file_per_evaluated_stage_entry_and_classifier(run: dict[str, dict[str, Any]]) -> None:
    rows = summary_row_files(run)
    assert len(rows) == len(set(rows))
    base = "results/tiny"
    assert rows[:4] == [f"{base}/eval/saliency/c2am_h/summary_rows.csv",
                        f"{base}/eval/saliency_hints/cam/advcam/summary_rows.csv",
                        f"{base}/classifier/cam/summary_rows.csv", f"{base}/classifier/cam_softmax/summary_rows.csv"]
    assert f"{base}/eval/wsol/cam_softmax/advcam/summary_rows.csv" in rows
    assert f"{base}/eval/pseudo_masks/cam/cam/summary_rows.csv" in rows
    assert f"{base}/eval/segmentation_crf/cam/cam+gt/summary_rows.csv" in rows
    assert f"{base}/eval/segmentation/cam/full/summary_rows.csv" in rows
    assert not [row for row in rows if "/pseudo_masks_crf/" in row or "/pseudo_masks/cam/advcam/" in row]
    assert not [row for row in rows if re.search(r"/eval/(seeds|pseudo_masks)\w*/cam/(full|cam\+gt)/", row)]


def test_the_report_draws_each_segmentation_experiment(run: dict[str, dict[str, Any]]) -> None:
    files = report_files(run)
    report = "results/tiny/report"
    assert files[:2] == [f"{report}/stages.html", f"{report}/seeds_precision_recall.png"]
    assert f"{report}/cam/cam/sweep.png" in files and f"{report}/cam/cam+gt/gallery.png" in files
    assert f"{report}/cam/full/per_class.png" in files
    assert not [f for f in files if f.endswith("sweep.png") and ("/full/" in f or "+gt" in f)]  # nothing swept
    assert not [f for f in files if "/cam/advcam/" in f]  # no segmentation network
    assert "results/tiny/segmentation/cam/cam_sal/png_crf" in files
    assert files[-1] == f"{report}/wsol_boxes.png"


def test_entry_names_are_the_wildcards_values(run: dict[str, dict[str, Any]]) -> None:
    assert entry_names(run, "seeds") == ["advcam", "cam", "cam_sal"]  # sorted keys (startup)
    assert saliency_background_seed_names(run) == ["cam_sal"]
    assert computed_seed_names(run) == ["advcam", "cam"]
    assert semi_supervised_names(run) == ["cam+gt"]
    assert wsol_seed_names(run) == ["advcam"]
    assert entry_names(run, "weight_maps") == []
    assert hint_seeds(run["tiny"]) == [("cam", "advcam")]
    assert [(e["classifier"], e["seeds"]) for e in seed_experiments(run["tiny"])] == [
        ("cam", "cam"), ("cam", "advcam"), ("cam", "cam_sal")]
    assert named_experiment(run["tiny"], "cam", "cam+gt")["segmentation"] == {"ground_truth_subset": "gt.txt"}


def test_the_report_figures_read_each_experiments_files_by_name(run: dict[str, dict[str, Any]]) -> None:
    config, base = run["tiny"], "results/tiny"
    assert experiment_files("tiny", config, "cam", "cam", "curve.csv", ("seeds", "seeds_crf", "pseudo_masks")) == {
        stage: f"{base}/eval/{stage}/cam/cam/curve.csv" for stage in ("seeds", "seeds_crf", "pseudo_masks")}
    assert list(experiment_files("tiny", config, "cam", "cam+gt", "per_class.csv")) == ["segmentation",
                                                                                         "segmentation_crf"]
    assert seeds_curves("tiny", config) == {name: f"{base}/eval/seeds/{name}/curve.csv"
                                            for name in ("cam/cam", "cam/advcam", "cam/cam_sal")}
    assert gallery_inputs("tiny", config, "cam", "full") == {"manifest": f"{base}/data/train.csv",
                                                             "predictions": f"{base}/segmentation/cam/full/gallery.h5"}
    # A semi-supervised network: the seeds and pseudo masks of its weakly supervised experiment.
    semi = gallery_inputs("tiny", config, "cam", "cam+gt")
    assert semi["predictions"] == f"{base}/segmentation/cam/cam+gt/gallery.h5"
    assert (semi["seeds"], semi["seeds_rows"], semi["pseudo_masks"]) == (
        f"{base}/seeds/cam/cam/maps.h5", f"{base}/eval/seeds/cam/cam/summary_rows.csv",
        f"{base}/pseudo_masks/cam/cam/masks.h5")
    wsol = "cam_softmax/advcam"
    assert wsol_box_files("tiny", config) == {"manifest": f"{base}/wsol_data/val.csv",
                                              f"boxes {wsol}": f"{base}/eval/wsol/{wsol}/boxes.csv",
                                              f"maps {wsol}": f"{base}/wsol_evaluation/{wsol}/maps.h5"}


def test_a_wildcard_constraint_matches_exactly_its_names() -> None:
    pattern = alternatives(["cam", "cam+gt20", "a.b"])
    assert all(re.fullmatch(pattern, name) for name in ("cam", "cam+gt20", "a.b"))
    assert not any(re.fullmatch(pattern, name) for name in ("camm", "camgt20", "a_b", ""))
    assert alternatives([]) == NEVER and not re.fullmatch(NEVER, "") and not re.fullmatch(NEVER, "cam")


def test_the_default_configs_summary_lists_each_experiments_stages(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """config.yaml: the weakly supervised experiments are scored at every stage they reach (seeds,
    pseudo masks, segmentation, each with its dCRF where set), full supervision at the segmentation
    network's only; the report draws each segmentation experiment."""
    path = ROOT / "config.yaml"
    monkeypatch.chdir(tmp_path)
    run = load_run_configs(yaml.safe_load(path.read_text()), SCHEMA_PATH, [path])
    (name, config), = run.items()
    rows, files = summary_row_files(run), report_files(run)
    seeds_crf, masks_crf, seg_crf = (config["evaluation"]["seeds"]["crf"], config["pseudo_masks"]["crf"],
                                     config["segmentation"]["crf"])
    assert {"full"} < {e["seeds"] for e in config["experiments"]}
    for e in config["experiments"]:
        stages = experiment_stages(config, e)
        if e["seeds"] == "full":
            expected = ["segmentation"]
        else:
            expected = ["seeds"]
            if e.get("pseudo_masks", True):
                expected += ["pseudo_masks", "segmentation"] if e.get("segmentation", True) else ["pseudo_masks"]
        crf = {"seeds": seeds_crf, "pseudo_masks": masks_crf, "segmentation": seg_crf}
        assert stages == [s for stage in expected for s in ([stage, f"{stage}_crf"] if crf[stage] else [stage])], e
        network = e["seeds"]
        for stage in stages:
            assert f"results/{name}/eval/{stage}/{e['classifier']}/{network}/summary_rows.csv" in rows, (e, stage)
        if "segmentation" in stages:
            assert f"results/{name}/report/{e['classifier']}/{network}/gallery.png" in files
    classifiers = {e["classifier"] for e in [*config["experiments"], *config["wsol"]["experiments"]]}
    assert {f"results/{name}/classifier/{c}/summary_rows.csv" for c in classifiers} <= set(rows)
    assert {f"results/{name}/eval/saliency/{s}/summary_rows.csv" for s in config["saliency"]} <= set(rows)
    assert {f"results/{name}/eval/wsol/{e['classifier']}/{e['maps']}/summary_rows.csv"
            for e in config["wsol"]["experiments"]} <= set(rows)
    stage_rows = [row for row in rows if "/eval/" in row and "/eval/saliency" not in row and "/eval/wsol/" not in row]
    assert len(stage_rows) == len({(e["classifier"], e["seeds"], s) for e in config["experiments"]
                                   for s in experiment_stages(config, e)})
