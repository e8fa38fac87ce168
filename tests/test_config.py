"""Config validation: unknown keys named with the allowed ones, before any job starts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from wsss_steps.workflow.config import ConfigError, check_config, missing_weight_files

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def test_default_config_is_valid() -> None:
    check_config(CONFIG, SCHEMA)


def test_mistyped_key_is_named_with_allowed_keys() -> None:
    config = copy.deepcopy(CONFIG)
    config["classifiers"]["cam"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError) as error:
        check_config(config, SCHEMA)
    message = str(error.value)
    assert "'classifiers.cam.learning_rate'" in message
    assert "allowed keys here: backbone, backbone_weights, batch_size" in message


def test_experiment_must_name_configured_parts() -> None:
    config = copy.deepcopy(CONFIG)
    index = len(config["experiments"])
    config["experiments"].append({"classifier": "puzzle", "seeds": "cam"})
    with pytest.raises(ConfigError, match=rf"experiments\[{index}\].classifier = 'puzzle' is not a key of 'classifiers'"):
        check_config(config, SCHEMA)


def test_full_is_a_reserved_seeds_name() -> None:
    config = copy.deepcopy(CONFIG)
    assert {"classifier": "cam", "seeds": "full"} in config["experiments"]  # the upper bound
    config["seeds"]["full"] = {"method": "cam"}
    with pytest.raises(ConfigError, match="'full' is reserved"):
        check_config(config, SCHEMA)
    config = copy.deepcopy(CONFIG)
    config["experiments"].append({"classifier": "cam", "seeds": "full", "segmentation": False})
    with pytest.raises(ConfigError, match="needs segmentation: true"):
        check_config(config, SCHEMA)


def test_missing_weight_files_are_named_only_where_read(tmp_path: Path) -> None:
    present = tmp_path / "resnet50.pth"
    present.write_bytes(b"")
    config = {"classifiers": {"a": {"backbone": "resnet50", "pretrained": True, "backbone_weights": str(present)},
                              "b": {"backbone": "resnet50", "pretrained": False, "backbone_weights": "gone.pth"},
                              "c": {"backbone": "resnet101", "pretrained": True, "backbone_weights": "r101.pth"}},
              "relation": {"backbone": "classifier", "backbone_weights": "unused.pth"},
              "segmentation": {"backbone": "resnet101", "pretrained": True, "backbone_weights": None}}
    assert missing_weight_files(config) == [
        "classifiers.c.backbone_weights: file not found: r101.pth (backbone resnet101)"]
    config["relation"]["backbone"] = "resnet50"
    assert missing_weight_files(config)[-1] == "relation.backbone_weights: file not found: unused.pth (backbone resnet50)"
    assert missing_weight_files(CONFIG) == []


def test_per_seeds_settings_must_name_configured_seeds() -> None:
    config = copy.deepcopy(CONFIG)
    config["random_walk"]["per_seeds"] = {"advcm": {"seed_power": 1.5}}
    with pytest.raises(ConfigError, match=r"random_walk.per_seeds.advcm: 'advcm' is not a key of 'seeds'"):
        check_config(config, SCHEMA)
    config["random_walk"]["per_seeds"] = {"advcam": {"seed_powr": 1.5}}
    with pytest.raises(ConfigError, match=r"unknown config key 'random_walk.per_seeds.advcam.seed_powr' "
                                           r"\(did you mean 'seed_power'\?\)"):
        check_config(config, SCHEMA)


def _with_variant(variant: str, **settings: object) -> dict:
    config = copy.deepcopy(CONFIG)
    config["classifiers"]["variant_x"] = {**config["classifiers"]["cam"], "variant": variant, **settings}
    return config


def test_ordinary_classifier_is_named_where_read_and_never_circular() -> None:
    check_config(_with_variant("p_noc", ordinary="cam"), SCHEMA)
    with pytest.raises(ConfigError, match="classifiers.variant_x: variant oc_cse needs ordinary"):
        check_config(_with_variant("oc_cse"), SCHEMA)
    with pytest.raises(ConfigError, match="classifiers.variant_x.ordinary: read by oc_cse, p_noc, p_oc only"):
        check_config(_with_variant("puzzle", ordinary="cam"), SCHEMA)
    with pytest.raises(ConfigError, match="ordinary = 'vanilla' is not a key of 'classifiers'"):
        check_config(_with_variant("p_oc", ordinary="vanilla"), SCHEMA)
    config = _with_variant("p_oc", ordinary="cam")
    config["classifiers"]["cam"].update(variant="oc_cse", ordinary="variant_x")
    with pytest.raises(ConfigError, match="variant_x → cam → variant_x is a cycle"):
        check_config(config, SCHEMA)


def test_puzzle_crop_must_split_into_mergeable_tiles() -> None:
    with pytest.raises(ConfigError, match=r"crop = 120: variant puzzle needs a crop divisible by 2 × output_stride = 16"):
        check_config(_with_variant("puzzle", crop=120), SCHEMA)


def test_wsol_experiments_are_checked_before_any_job() -> None:
    config = copy.deepcopy(CONFIG)
    config["seeds"]["cam_c2am_h"]["method"] = "saliency_background"
    config["wsol"]["experiments"] += [{"classifier": "cam_softmax", "maps": "cam_c2am_h"},
                                      {"classifier": "nope", "maps": "cam"},
                                      {"classifier": "cam_softmax", "maps": "missing"},
                                      {"classifier": "cam_softmax", "maps": "cam"}]
    config["weight_maps"]["unused"] = {}
    config["classifiers"]["p_noc"]["loss"] = "softmax"
    with pytest.raises(ConfigError) as error:
        check_config(config, SCHEMA)
    message = str(error.value)
    first = len(CONFIG["wsol"]["experiments"])
    assert (f"wsol.experiments[{first}].maps = 'cam_c2am_h': seeds of method saliency_background are not "
            "computed") in message
    assert f"wsol.experiments[{first + 1}].classifier = 'nope' is not a key of 'classifiers'" in message
    assert f"wsol.experiments[{first + 2}].maps = 'missing' is neither a key of 'seeds'" in message
    assert f"wsol.experiments[{first + 3}]: classifier 'cam_softmax' with maps 'cam' is listed twice" in message
    assert "weight_maps.unused: no wsol.experiments entry names it" in message
    assert "classifiers.p_noc.loss = softmax: the WSOL classifier is variant cam, not p_noc" in message
    config = copy.deepcopy(CONFIG)
    config["experiments"], config["wsol"]["experiments"], config["weight_maps"] = [], [], {}
    with pytest.raises(ConfigError, match="experiments: empty, and wsol.experiments too: nothing to run"):
        check_config(config, SCHEMA)
    config = copy.deepcopy(CONFIG)
    config["wsol"]["calibration_split"] = "val"
    with pytest.raises(ConfigError, match="calibration_split and evaluation_split are the same split"):
        check_config(config, SCHEMA)


def test_the_readme_configs_are_valid() -> None:
    """Every whole config the README shows (VOC, COCO) passes the checks and the schema."""
    import re

    import jsonschema

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    configs = [yaml.safe_load(block) for block in blocks]
    whole = [c for c in configs if isinstance(c, dict) and "dataset" in c]
    assert {c["dataset"]["kind"] for c in whole} >= {"voc2012", "coco"}
    for config in whole:
        check_config(config, SCHEMA)
        jsonschema.validate(config, SCHEMA)


@pytest.mark.parametrize("experiment, message", [
    ({"classifier": "cam", "seeds": "full", "segmentation": {"ground_truth_subset": "gt.txt"}},
     r"experiments\[\d\].segmentation.ground_truth_subset: seeds 'full' trains on every ground-truth mask"),
    ({"classifier": "cam", "seeds": "cam", "pseudo_masks": False, "segmentation": {"ground_truth_subset": "gt.txt"}},
     r"ground_truth_subset: the other images train on pseudo masks; this experiment has pseudo_masks: false"),
    ({"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "missing.txt"}},
     r"ground_truth_subset: file not found: missing.txt"),
    ({"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "bad.txt"}},
     r"ground_truth_subset: invalid image id '../x'"),
    ({"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.csv"}},
     r"'gt.csv' does not match"),
])
def test_semi_supervised_experiments_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 experiment: dict, message: str) -> None:
    import jsonschema

    monkeypatch.chdir(tmp_path)
    Path("gt.txt").write_text("train_000001\n")
    Path("bad.txt").write_text("train_000001\n../x\n")
    config = copy.deepcopy(CONFIG)
    config["experiments"] = [experiment]
    if "does not match" in message:
        with pytest.raises(jsonschema.ValidationError, match=message):
            jsonschema.validate(config, SCHEMA)
        return
    with pytest.raises(ConfigError, match=message):
        check_config(config, SCHEMA)
    # The same subset twice is one experiment listed twice.
    config["experiments"] = [{"classifier": "cam", "seeds": "cam", "segmentation": {"ground_truth_subset": "gt.txt"}}] * 2
    with pytest.raises(ConfigError, match=r"with seeds 'cam' and ground-truth subset 'gt' is listed twice"):
        check_config(config, SCHEMA)


def test_method_ii_keys_are_refused_on_method_i() -> None:
    config = copy.deepcopy(CONFIG)
    name = next(iter(config["weight_maps"]))
    config["weight_maps"][name]["embedding_epochs"] = 3
    with pytest.raises(ConfigError, match=rf"weight_maps.{name}.embedding_epochs: read by method ii only"):
        check_config(config, SCHEMA)
    config["weight_maps"][name]["method"] = "ii"
    check_config(config, SCHEMA)
