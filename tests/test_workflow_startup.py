"""The Snakefile's start: the run's configs read and checked (main config and `datasets_from`), and
the checks that open the datasets (splits, masks, ground-truth subsets, changed manifests)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from wsss_steps.data.manifest import DatasetError
from wsss_steps.data.sources import OUT_OF_DATE_NS, record_sources
from wsss_steps.workflow.config import ConfigError
from wsss_steps.workflow.startup import (
    check_ground_truth_subsets,
    check_masks,
    check_splits,
    invalidate_changed_manifests,
    load_run_configs,
    run_startup_checks,
    sorted_mapping,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schemas" / "config.schema.yaml"
SMALL: dict[str, Any] = {
    "dataset": {"name": "tiny", "kind": "generated", "root": "data/tiny",
                "generator": {"num_train": 24, "num_val": 12, "image_size": 64, "num_classes": 3, "seed": 1}},
    "classifiers": {"cam": {"variant": "cam", "backbone": "small_resnet", "epochs": 2}},
    "seeds": {"cam": {"method": "cam", "scales": [1.0]}},
    "experiments": [{"classifier": "cam", "seeds": "cam"}, {"classifier": "cam", "seeds": "full"}],
    "evaluation": {"seeds": {"thresholds": [0.1, 0.5, 0.1]}},
}


def small(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(SMALL), **copy.deepcopy(changes)}


def second() -> dict[str, Any]:
    config = small(experiments=[{"classifier": "cam", "seeds": "cam", "pseudo_masks": False}])
    config["dataset"] = {"name": "tiny2", "kind": "generated", "root": "data/tiny2",
                         "generator": {"num_train": 16, "num_val": 8, "num_classes": 2, "seed": 2}}
    config["classifiers"]["cam"]["epochs"] = 1
    return config


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (dataset roots, datasets_from files) are the run folder's."""
    monkeypatch.chdir(tmp_path)


def test_sorted_mapping_sorts_keys_at_every_depth_and_keeps_list_order() -> None:
    value = {"b": [{"z": 1, "a": 2}, 3], "a": {"d": 0, "c": [2, 1]}}
    result = sorted_mapping(value)
    assert list(result) == ["a", "b"] and list(result["a"]) == ["c", "d"] and list(result["b"][0]) == ["a", "z"]
    assert result == value and result["a"]["c"] == [2, 1]


def test_the_main_config_is_validated_sorted_and_left_as_given() -> None:
    given = small()
    configs = load_run_configs(given, SCHEMA_PATH)
    assert list(configs) == ["tiny"]
    config = configs["tiny"]
    assert list(config) == sorted(config) and list(config["classifiers"]["cam"]) == sorted(config["classifiers"]["cam"])
    assert config["evaluation"]["seeds"]["crf"] is True  # a schema default, filled in
    assert config["datasets_from"] == []
    assert given == small()


def test_datasets_from_adds_each_files_dataset_with_its_own_settings(tmp_path: Path) -> None:
    write(tmp_path / "second.yaml", second())
    configs = load_run_configs(small(datasets_from=["second.yaml"]), SCHEMA_PATH)
    assert list(configs) == ["tiny", "tiny2"]
    assert [configs[name]["classifiers"]["cam"]["epochs"] for name in configs] == [2, 1]
    assert configs["tiny2"]["evaluation"]["seeds"]["crf"] is True  # validated too


@pytest.mark.parametrize("files, message", [
    ({"same.yaml": small()}, r"same.yaml: dataset name 'tiny' is already in this run"),
    ({}, r"datasets_from: config file not found: same.yaml"),
    ({"same.yaml": {**second(), "datasets_from": ["other.yaml"]}},
     r"same.yaml: datasets_from is read from the main config only"),
    ({"same.yaml": {**second(), "seeds": {"cam": {"method": "cam"}, "bad": {"method": "cam", "scales": "x"}}}},
     r"invalid configuration \(same.yaml\):\n  config key 'seeds.bad.scales'"),
])
def test_datasets_from_problems_name_the_file(tmp_path: Path, files: dict[str, Any], message: str) -> None:
    for name, config in files.items():
        write(tmp_path / name, config)
    with pytest.raises(ConfigError, match=message):
        load_run_configs(small(datasets_from=["same.yaml"]), SCHEMA_PATH)


def test_an_entry_name_means_one_kind_of_entry_across_the_datasets(tmp_path: Path) -> None:
    other = second()
    other["seeds"] = {"cam": {"method": "saliency_background", "seeds": "plain", "saliency": "sal"},
                      "plain": {"method": "cam"}}
    other["saliency"] = {"sal": {"method": "c2am", "backbone": "small_resnet", "pretrained": False}}
    other["experiments"] = [{"classifier": "cam", "seeds": "plain", "pseudo_masks": False}]
    write(tmp_path / "kinds.yaml", other)
    with pytest.raises(ConfigError, match=r"entry name 'cam' means different kinds of entry across the run's "
                                          r"datasets \(computed seeds in tiny; "
                                          r"seeds with a saliency background in tiny2\)"):
        load_run_configs(small(datasets_from=["kinds.yaml"]), SCHEMA_PATH)


def test_the_main_configs_problems_name_its_files(tmp_path: Path) -> None:
    path = write(tmp_path / "my.yaml", small(classifiers={"cam": {"variant": "cam", "learning_rate": 1}}))
    with pytest.raises(ConfigError, match=r"invalid configuration \(.*my.yaml\):\n.*'classifiers.cam.learning_rate'"):
        load_run_configs(yaml.safe_load(path.read_text()), SCHEMA_PATH, [path])


def test_config_yamls_generator_merged_into_another_kind_of_dataset_is_left_out() -> None:
    """Without --replace-workflow-config, config.yaml's generator settings are merged into a
    --configfile's custom dataset: not the user's, so dropped with a note instead of refused."""
    custom = {"name": "mine", "kind": "custom", "root": "data/mine"}
    merged = small(dataset={**custom, "generator": SMALL["dataset"]["generator"]})
    notes: list[str] = []
    configs = load_run_configs(merged, SCHEMA_PATH, overrides={"dataset": custom}, replaced=False, log=notes.append)
    assert "generator" not in configs["mine"]["dataset"]
    assert notes and notes[0].startswith("dataset.generator of config.yaml is not read: dataset.kind is custom")
    assert "generator" in merged["dataset"]
    # Replaced (or written by the user): refused, as every setting nothing reads.
    with pytest.raises(ConfigError, match="dataset.generator: read by kind: generated only"):
        load_run_configs(merged, SCHEMA_PATH, overrides={"dataset": custom}, replaced=True)


class FakeDataset:
    """A user's dataset: its splits' ids, and the ids with a mask."""

    def __init__(self, splits: dict[str, list[str]], masked: set[str]) -> None:
        self.splits, self.masked = splits, masked

    def split_ids(self, split: str) -> list[str]:
        if split not in self.splits:
            raise DatasetError(f"no split list for {split!r}")
        return self.splits[split]

    def mask_path(self, image_id: str) -> Path | None:
        return Path(f"{image_id}.png") if image_id in self.masked else None


def user_config(**changes: Any) -> dict[str, Any]:
    """A custom dataset's config as the checks read it (validated: the splits and sections set)."""
    config = {"dataset": {"name": "voc", "kind": "custom", "root": "data/voc", "train_split": "train",
                          "val_split": "val"},
              "experiments": [{"classifier": "cam", "seeds": "cam"}], "saliency": {}, "wsol": {"experiments": []}}
    config.update(changes)
    return config


IDS = {"train": ["a", "b", "c"], "val": ["d", "e"]}


def opener(dataset: FakeDataset):
    opened: list[str] = []

    def open_adapter(name: str) -> FakeDataset:
        opened.append(name)
        return dataset
    open_adapter.opened = opened  # type: ignore[attr-defined]
    return open_adapter


def never_opened(name: str) -> FakeDataset:
    raise AssertionError(f"dataset {name} opened")


def test_every_split_the_run_reads_must_exist() -> None:
    check_splits({"voc": user_config()}, opener(FakeDataset(IDS, set())))
    wsol = user_config(wsol={"experiments": [{"classifier": "c", "maps": "cam"}], "calibration_split": "trainval"})
    with pytest.raises(ConfigError, match=r"dataset voc: wsol.calibration_split = 'trainval': no split list"):
        check_splits({"voc": wsol}, opener(FakeDataset(IDS, set())))


def test_generated_datasets_are_not_opened() -> None:
    configs = {"tiny": {"dataset": {"name": "tiny", "kind": "generated"}, "experiments": []}}
    check_splits(configs, never_opened)
    check_masks(configs, never_opened)
    check_ground_truth_subsets(configs, never_opened)


def test_the_seed_and_val_splits_need_masks_where_something_scores_them() -> None:
    with pytest.raises(ConfigError) as error:
        check_masks({"voc": user_config()}, opener(FakeDataset(IDS, {"a", "d"})))
    message = str(error.value)
    assert "dataset voc: 2 image(s) of split 'train' have no ground-truth mask (e.g. 'b', 'c')" in message
    assert "1 image(s) of split 'val' have no ground-truth mask (e.g. 'e')" in message
    # Seeds only (no segmentation network): the val split's masks are not read.
    seeds_only = user_config(experiments=[{"classifier": "cam", "seeds": "cam", "pseudo_masks": False}])
    check_masks({"voc": seeds_only}, opener(FakeDataset(IDS, {"a", "b", "c"})))
    # WSOL alone scores no mask of the seed split (CUB without segmentations/).
    wsol_only = user_config(experiments=[], wsol={"experiments": [{"classifier": "c", "maps": "cam"}]})
    check_masks({"voc": wsol_only}, opener(FakeDataset(IDS, set())))


def test_a_ground_truth_subset_holds_masked_images_of_the_train_split(tmp_path: Path) -> None:
    (tmp_path / "gt.txt").write_text("a\nb\nz\n")
    semi = {"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt"}}
    config = user_config(experiments=[{"classifier": "cam", "seeds": "cam"}, semi])
    with pytest.raises(ConfigError) as error:
        check_ground_truth_subsets({"voc": config}, opener(FakeDataset(IDS, {"a"})))
    message = str(error.value)
    assert "dataset voc, experiment cam+gt: 1 id(s) of the ground-truth subset gt.txt are not images of split " \
           "'train' (e.g. 'z')" in message
    assert "1 id(s) of the ground-truth subset gt.txt have no ground-truth mask (e.g. 'b')" in message
    (tmp_path / "gt.txt").write_text("a\nb\n")
    check_ground_truth_subsets({"voc": config}, opener(FakeDataset(IDS, {"a", "b"})))


def test_a_generated_datasets_subset_is_checked_against_its_generator_settings(tmp_path: Path) -> None:
    (tmp_path / "gt.txt").write_text("train_000001\ntrain_000024\n")  # ids 000000..000023
    semi = {"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt"}}
    config = load_run_configs(small(experiments=[*SMALL["experiments"], semi]), SCHEMA_PATH)
    with pytest.raises(ConfigError, match=r"experiment cam\+gt: 1 id\(s\) .* \(e.g. 'train_000024'\)"):
        check_ground_truth_subsets(config, never_opened)


def recorded_manifest(tmp_path: Path) -> tuple[Path, Path]:
    """A source file and the manifest of dataset `voc`'s train split with its sources recorded."""
    source = tmp_path / "labels.csv"
    source.write_text("a,1\n")
    manifest = tmp_path / "results" / "voc" / "data" / "train.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("image_id\na\n")
    record_sources([source], manifest)
    return source, manifest


def test_a_manifest_whose_sources_changed_content_is_marked_out_of_date(tmp_path: Path) -> None:
    source, manifest = recorded_manifest(tmp_path)
    notes: list[str] = []
    invalidate_changed_manifests(["voc", "other"], tmp_path / "results", notes.append)
    assert notes == [] and os.stat(manifest).st_mtime_ns != OUT_OF_DATE_NS
    source.write_text("a,2\n")
    invalidate_changed_manifests(["voc"], tmp_path / "results", notes.append)
    assert os.stat(manifest).st_mtime_ns == OUT_OF_DATE_NS
    assert len(notes) == 1 and notes[0].startswith("dataset voc: 1 file(s) of split train changed content")


def test_the_start_up_checks_mark_manifests_before_refusing_a_split(tmp_path: Path) -> None:
    source, manifest = recorded_manifest(tmp_path)
    source.write_text("a,2\n")
    dataset = FakeDataset({"train": IDS["train"]}, set(IDS["train"]))
    open_adapter = opener(dataset)
    with pytest.raises(ConfigError, match="dataset.val_split = 'val'"):
        run_startup_checks({"voc": user_config()}, open_adapter, tmp_path / "results")
    assert os.stat(manifest).st_mtime_ns == OUT_OF_DATE_NS
    assert open_adapter.opened == ["voc"]  # type: ignore[attr-defined]
