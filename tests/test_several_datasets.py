"""Several datasets in one run (`datasets_from`) and the semi-supervised setting, end to end."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from .workflow_helpers import ENV, SNAKEMAKE, snakemake, tiny_config, write_config

GROUND_TRUTH_IDS = ["train_000001", "train_000004", "train_000009", "train_000016", "train_000020"]


def second_dataset() -> dict:
    """Another generated dataset with its own classes, classifier recipe and experiments: seeds only."""
    config = tiny_config(experiments=[{"classifier": "cam", "seeds": "cam", "pseudo_masks": False}])
    config["dataset"] = {"name": "tiny2", "kind": "generated", "root": "data/tiny2",
                         "generator": {"num_train": 16, "num_val": 8, "image_size": 64, "num_classes": 2, "seed": 2}}
    config["classifiers"]["cam"]["epochs"] = 1
    return config


def shell_commands(dry_run_output: str) -> set[str]:
    """The steps' command lines a dry run with --printshellcmds plans."""
    commands = {line.removeprefix("Shell command: ") for line in dry_run_output.splitlines()}
    return {line for line in commands if line.startswith("python -m wsss_steps.")}


def test_a_combined_run_plans_exactly_each_datasets_own_jobs(tmp_path: Path) -> None:
    """Each dataset's jobs, with their params and options, are those of its config run alone:
    only the summary (and so the report) covers both."""
    write_config(tmp_path, second_dataset(), "second.yaml")
    alone = tiny_config()
    write_config(tmp_path, alone, "first.yaml")
    write_config(tmp_path, {**alone, "datasets_from": ["second.yaml"]}, "both.yaml")

    def planned(config: str) -> set[str]:
        out = snakemake(tmp_path, "--configfile", str(tmp_path / config), "--replace-workflow-config", "--dry-run",
                        "--printshellcmds")
        return shell_commands(out.stdout + out.stderr)

    first, second, both = planned("first.yaml"), planned("second.yaml"), planned("both.yaml")
    assert len(first) > 40 and len(second) > 10
    summaries = {c for c in first | second | both if c.startswith("python -m wsss_steps.summarize")}
    assert (first | second) - summaries == both - summaries
    (combined,) = summaries & both
    assert "results/tiny/" in combined and "results/tiny2/" in combined
    assert any("--dataset tiny2" in c and "report_figures table" in c for c in both)


@pytest.mark.parametrize("problem, message", [
    ({"datasets_from": ["missing.yaml"]}, r"datasets_from: config file not found: missing.yaml"),
    ({"datasets_from": ["same.yaml"]}, r"same.yaml: dataset name 'tiny' is already in this run"),
    ({"datasets_from": ["kinds.yaml"]}, r"entry name 'cam' means different kinds of entry.*computed seeds in tiny"
                                        r".*seeds with a saliency background in tiny2"),
])
def test_datasets_from_problems_are_named_before_any_job(tmp_path: Path, problem: dict, message: str) -> None:
    write_config(tmp_path, tiny_config(), "same.yaml")
    kinds = second_dataset()
    kinds["seeds"] = {"cam": {"method": "saliency_background", "seeds": "plain", "saliency": "sal"},
                      "plain": {"method": "cam"}}
    kinds["saliency"] = {"sal": {"method": "c2am", "backbone": "small_resnet", "pretrained": False}}
    kinds["experiments"] = [{"classifier": "cam", "seeds": "plain", "pseudo_masks": False}]
    write_config(tmp_path, kinds, "kinds.yaml")
    write_config(tmp_path, tiny_config(**problem))
    result = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--dry-run"], capture_output=True,
                            text=True, env=ENV, timeout=300)
    assert result.returncode != 0 and re.search(message, result.stdout + result.stderr), result.stderr[-2000:]


def test_two_datasets_run_together_and_semi_supervised_takes_exactly_its_subset(tmp_path: Path) -> None:
    (tmp_path / "gt.txt").write_text("\n".join(GROUND_TRUTH_IDS) + "\n")
    write_config(tmp_path, second_dataset(), "second.yaml")
    semi = {"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt"}}
    # The same subset with cross-consistency training (docs/methods.md §10), one decoder of each kind.
    cct = {"classifier": "cam", "seeds": "cam", "segmentation": {
        "ground_truth_subset": "gt.txt", "method": "cct", "decoders": {"drop": 1, "cutout": 1, "vat": 1,
                                                                       "context_masking": 1, "object_masking": 1,
                                                                       "feature_drop": 1, "feature_noise": 1}}}
    # One shard a stage (sharding is tested by test_workflow): every job starts a process.
    config = tiny_config(datasets_from=["second.yaml"], shards=1,
                         experiments=[{"classifier": "cam", "seeds": "cam"}, semi, cct])
    write_config(tmp_path, config)
    snakemake(tmp_path, "--cores", "2")

    summary = pd.read_csv(tmp_path / "results/summary.csv")
    assert set(summary["dataset"]) == {"tiny", "tiny2"}
    tiny2 = summary[summary["dataset"] == "tiny2"]
    assert set(tiny2["stage"]) == {"classifier", "seeds", "seeds_crf"}
    segmentation = summary[(summary["dataset"] == "tiny") & (summary["stage"] == "segmentation")
                           & (summary["metric"] == "miou")]
    assert sorted(segmentation["method"]) == ["cam", "cam+gt", "cam+gt+cct"]
    # Each dataset its own artifacts: tiny2's classifier knows its 2 classes, tiny's its 3.
    for name, classes in (("tiny", 3), ("tiny2", 2)):
        model = torch.load(tmp_path / f"results/{name}/classifier/cam/model.pt", weights_only=True)
        assert len(model["meta"]["class_names"]) == classes
    # The semi-supervised network trained on the weakly supervised one's pseudo masks but took the
    # ground truth on exactly the subset's images; the two models differ.
    semi_model = torch.load(tmp_path / "results/tiny/segmentation/cam/cam+gt/model.pt", weights_only=True)
    weak_model = torch.load(tmp_path / "results/tiny/segmentation/cam/cam/model.pt", weights_only=True)
    assert semi_model["meta"]["ground_truth_ids"] == GROUND_TRUTH_IDS
    assert semi_model["meta"]["training"]["masks"] == weak_model["meta"]["training"]["masks"]
    assert not torch.equal(semi_model["state_dict"]["head.classifier.weight"],
                           weak_model["state_dict"]["head.classifier.weight"])
    log = (tmp_path / "logs/tiny/train_segmentation_cam_cam+gt.log").read_text()
    assert "ground truth on 5 images" in log
    # CCT: the same subset and pseudo masks (weak labels), its settings in the model's identity.
    cct_model = torch.load(tmp_path / "results/tiny/segmentation/cam/cam+gt+cct/model.pt", weights_only=True)
    assert cct_model["meta"]["ground_truth_ids"] == GROUND_TRUTH_IDS
    assert cct_model["meta"]["training"]["masks"] == weak_model["meta"]["training"]["masks"]
    assert cct_model["meta"]["training"]["cct"]["weak_labels"]
    assert sum(cct_model["meta"]["training"]["cct"]["decoders"].values()) == 7
    assert "CCT: ground truth on 5 images" in (tmp_path / "logs/tiny/train_segmentation_cam_cam+gt+cct.log").read_text()
    assert (tmp_path / "results/tiny/report/cam/cam+gt+cct/per_class.png").is_file()
    # Each dataset's report table holds its own experiments only.
    assert "cam+gt" in (tmp_path / "results/tiny/report/stages.html").read_text()
    assert "cam+gt" not in (tmp_path / "results/tiny2/report/stages.html").read_text()
    assert (tmp_path / "results/tiny/report/cam/cam+gt/per_class.png").is_file()
    assert not (tmp_path / "results/tiny/report/cam/cam+gt/sweep.png").exists()
    # One HTML report over both datasets.
    snakemake(tmp_path, "--report", "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "tiny2" in page and "cam+gt" in page and "cam+gt+cct" in page


def test_ground_truth_subset_outside_the_train_split_is_refused(tmp_path: Path) -> None:
    """A user's dataset: the subset's ids are checked against the train split before any job."""
    from .test_datasets import make_voc_layout

    root = make_voc_layout(tmp_path / "data", {"a": "cat", "b": "dog", "c": "cat"})
    (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("c\n")
    (tmp_path / "gt.txt").write_text("a\nc\n")
    config = tiny_config(experiments=[{"classifier": "cam", "seeds": "cam",
                                       "segmentation": {"ground_truth_subset": "gt.txt"}}])
    config["dataset"] = {"name": "mine", "kind": "custom", "root": str(root)}
    write_config(tmp_path, config)
    result = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--dry-run"], capture_output=True,
                            text=True, env=ENV, timeout=300)
    assert result.returncode != 0
    assert "experiment cam+gt: 1 id(s) of the ground-truth subset gt.txt are not images of split 'train' (e.g. 'c')" \
        in result.stdout + result.stderr
