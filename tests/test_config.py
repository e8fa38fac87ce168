"""Config validation: unknown keys named with the allowed ones, before any job starts."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from wsss_steps.workflow.config import ConfigError, check_config, missing_weight_files

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())
# The checks are tried on the config that uses every section (weight maps, three WSOL experiments).
CONFIG = yaml.safe_load((ROOT / "configs" / "all_methods.yaml").read_text())


def test_default_config_is_valid() -> None:
    check_config(DEFAULT, SCHEMA)
    check_config(CONFIG, SCHEMA)
    assert missing_weight_files(DEFAULT) == []


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
    """Every whole config the README and docs/ show (VOC, COCO, CUB) passes the checks and the schema."""
    import re

    import jsonschema

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [block for page in pages for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.DOTALL)]
    configs = [yaml.safe_load(block) for block in blocks]
    # A whole config has every top-level key the schema requires; snippets (a section or two) are not checked.
    whole = [c for c in configs if isinstance(c, dict) and set(SCHEMA["required"]) <= set(c)]
    assert {c["dataset"]["kind"] for c in whole} >= {"voc2012", "coco", "cub"}
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


def test_generated_split_ids_are_the_ids_the_generator_writes(tmp_path: Path) -> None:
    """Issue 29 item 8: the ids of a generated dataset are known before it is generated."""
    from wsss_steps.data.generated import (
        GeneratorError,
        GeneratorSettings,
        generate_dataset,
        split_ids,
    )
    from wsss_steps.workflow.config import generated_split_ids

    settings = GeneratorSettings(num_train=3, num_val=2, image_size=32, seed=1)
    generate_dataset(tmp_path / "ds", settings)
    for split in ("train", "val"):
        written = (tmp_path / "ds" / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert split_ids(settings, split) == written
        assert all((tmp_path / "ds" / "SegmentationClass" / f"{i}.png").is_file() for i in written)
    dataset = {"kind": "generated", "generator": {"num_train": 3, "num_val": 2, "image_size": 32, "seed": 1}}
    assert generated_split_ids(dataset, "train") == ["train_000000", "train_000001", "train_000002"]
    with pytest.raises(GeneratorError, match="the generated dataset's splits are train, val, not 'test'"):
        split_ids(settings, "test")


def test_ground_truth_subset_ids_are_checked_against_the_train_split(tmp_path: Path) -> None:
    from wsss_steps.workflow.config import ground_truth_subset_problems

    subset = tmp_path / "gt.txt"
    subset.write_text("train_000001\ntrain_000999\nval_000000\n")
    problems = ground_truth_subset_problems("tiny", "train", ["train_000000", "train_000001"],
                                            lambda image_id: image_id != "train_000001", {"cam+gt": str(subset)})
    assert problems == [
        f"dataset tiny, experiment cam+gt: 2 id(s) of the ground-truth subset {subset} are not images of split "
        "'train' (e.g. 'train_000999', 'val_000000')",
        f"dataset tiny, experiment cam+gt: 1 id(s) of the ground-truth subset {subset} have no ground-truth mask "
        "(e.g. 'train_000001')"]


def test_only_wsss_reads_the_seed_splits_masks() -> None:
    """Issue 29 item 9: a WSOL-only run needs no mask of the train split (CUB without segmentations/)."""
    from wsss_steps.workflow.config import needs_seed_masks

    assert needs_seed_masks(CONFIG)
    wsol_only = {**CONFIG, "experiments": [], "saliency": {}}
    assert not needs_seed_masks(wsol_only)
    assert needs_seed_masks({**wsol_only, "saliency": CONFIG["saliency"]})  # scored on the seed split


def test_only_the_config_files_in_use_are_read() -> None:
    """Issue 29 item 10: Snakemake lists config.yaml even when --replace-workflow-config drops it."""
    from wsss_steps.workflow.config import config_files_in_use

    given = (Path("mine.yaml").absolute(),)
    assert config_files_in_use([*given, "config.yaml"], given, replaced=True) == given
    assert config_files_in_use([*given, "config.yaml"], given, replaced=False) == (*given, "config.yaml")


def test_wsol_splits_must_exist() -> None:
    from wsss_steps.data.manifest import DatasetError
    from wsss_steps.workflow.config import missing_splits

    config = copy.deepcopy(CONFIG)
    config["wsol"]["evaluation_split"] = "test"
    with pytest.raises(ConfigError, match="wsol.evaluation_split = 'test': a generated dataset's splits are train, val"):
        check_config(config, SCHEMA)

    def split_ids(split: str) -> list[str]:
        if split not in ("train", "val"):
            raise DatasetError(f"no split file {split}.txt under ImageSets/")
        return ["a"]

    assert missing_splits(config, split_ids) == ["wsol.evaluation_split = 'test': no split file test.txt under ImageSets/"]
    config["wsol"]["experiments"] = []  # not read then
    assert missing_splits(config, split_ids) == []


@pytest.mark.parametrize("key, value, message", [
    ("dataset", "synth", "config key 'dataset' must be a mapping (indented key: value lines), not the str 'synth'"),
    ("experiments", "cam", "config key 'experiments' must be a list (- item lines), not the str 'cam'"),
    ("classifiers", {"cam": 3}, "config key 'classifiers.cam' must be a mapping (indented key: value lines), not "
                                "the int 3"),
])
def test_a_value_where_a_section_belongs_is_named(tmp_path: Path, key: str, value: object, message: str) -> None:
    """Issue 29 item 10: `dataset: synth` is named in one line, not an AttributeError."""
    config = copy.deepcopy(CONFIG)
    config[key] = value
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as error:
        check_config(config, SCHEMA, (path,))
    assert str(error.value) == f"invalid configuration ({path}):\n  {message}"


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "datasets_from: {path}: the file holds a YAML list, not a config"),
    ("", "datasets_from: {path}: the file is empty"),
    ("a: [1\n", "datasets_from: {path}: not valid YAML"),
])
def test_a_datasets_from_file_that_is_no_config_is_named(tmp_path: Path, text: str, message: str) -> None:
    from wsss_steps.workflow.config import read_config_file

    path = tmp_path / "other.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message.format(path=path))) as error:
        read_config_file(path)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="datasets_from: config file not found: missing.yaml"):
        read_config_file("missing.yaml")


def test_problems_of_a_config_file_name_the_file(tmp_path: Path) -> None:
    config = copy.deepcopy(CONFIG)
    config["colour"] = "red"
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=re.escape(f"invalid configuration ({path}):\n  unknown config key 'colour'")):
        check_config(config, SCHEMA, (path,))
    from wsss_steps.workflow.config import schema_problems

    config = copy.deepcopy(CONFIG)
    del config["evaluation"]
    config["shards"] = 0
    assert schema_problems(config, SCHEMA) == ["'evaluation' is a required property",
                                               "config key 'shards': 0 is less than the minimum of 1"]


def test_generator_settings_on_another_kind_are_refused() -> None:
    """Issue 29 item 10: `dataset.generator` on a custom dataset was silently ignored."""
    from wsss_steps.workflow.config import inherited_generator

    config = copy.deepcopy(CONFIG)
    config["dataset"].update(kind="custom", root="data/mine")
    with pytest.raises(ConfigError, match="dataset.generator: read by kind: generated only, not by kind: custom"):
        check_config(config, SCHEMA)
    # `--configfile my.yaml` merged into config.yaml: the generator settings are config.yaml's
    assert inherited_generator(config, {"dataset": {"name": "mine", "kind": "custom", "root": "data/mine"}})
    assert not inherited_generator(config, {"dataset": {"kind": "custom", "generator": {"seed": 2}}})
    assert not inherited_generator(config, {"shards": 3})  # the kind was edited in config.yaml itself
    del config["dataset"]["generator"]
    check_config(config, SCHEMA)


def test_saliency_background_seeds_of_saliency_background_seeds_are_refused() -> None:
    """Issue 29 item 10: the inner entry's saliency was lost."""
    config = copy.deepcopy(CONFIG)
    config["saliency"]["c2am"] = {"method": "c2am"}
    config["seeds"]["inner"] = {"method": "saliency_background", "seeds": "cam", "saliency": "c2am"}
    check_config(config, SCHEMA)
    config["seeds"]["outer"] = {"method": "saliency_background", "seeds": "inner", "saliency": "c2am_h"}
    with pytest.raises(ConfigError, match=re.escape(
            "seeds.outer.seeds = 'inner': seeds.inner is a saliency_background entry too, and its saliency "
            "('c2am') would be lost; name the seeds it takes ('cam') in seeds.outer.seeds")):
        check_config(config, SCHEMA)


@pytest.mark.parametrize("page", ["voc.md", "coco.md"])
def test_the_configs_the_docs_show_are_valid(page: str) -> None:
    """The VOC and COCO configs of docs/ (the first yaml block), merged into config.yaml as
    `--configfile` merges them, pass the schema: a user copying them meets no unknown key."""
    from snakemake.utils import update_config

    text = (ROOT / "docs" / page).read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None, page
    config = copy.deepcopy(DEFAULT)
    update_config(config, yaml.safe_load(block.group(1)))
    del config["dataset"]["generator"]  # config.yaml's, left out for a dataset of another kind
    check_config(config, SCHEMA)


@pytest.mark.parametrize(("overlay", "base"), [("variants.yaml", "config.yaml"),
                                               ("semi_supervised.yaml", "config.yaml"),
                                               ("msrc_variants.yaml", "configs/msrc.yaml")])
def test_the_overlay_configs_pass_the_schema_over_their_base(overlay: str, base: str) -> None:
    """Each overlay of configs/, merged over the config its header names (as `--configfile`
    merges it), passes the schema: its documented command starts."""
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / base).read_text())
    update_config(config, yaml.safe_load((ROOT / "configs" / overlay).read_text()))
    check_config(config, SCHEMA)


def test_the_default_datas_semi_supervised_subset_is_a_fifth_of_its_train_images() -> None:
    """configs/synth_train_gt20.txt (configs/semi_supervised.yaml): 64 distinct ids of the 320
    train images config.yaml generates, the draw its header states."""
    import random

    from wsss_steps.data.generated import image_id

    train_ids = [image_id("train", i) for i in range(DEFAULT["dataset"]["generator"]["num_train"])]
    subset = (ROOT / "configs" / "synth_train_gt20.txt").read_text().split()
    assert subset == sorted(random.Random(0).sample(train_ids, len(train_ids) // 5))
    assert len(set(subset)) == 64
