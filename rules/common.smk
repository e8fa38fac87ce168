import json
import os
import shlex
import sys

import yaml
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
# Jobs (local, in a conda env, or on cluster nodes) import the steps from this checkout.
shell.prefix(f"export PYTHONPATH={shlex.quote(workflow.basedir)}:$PYTHONPATH; ")

from wsss_steps.config_check import ConfigError, check_config, missing_weight_files  # noqa: E402

SCHEMA_PATH = os.path.join(workflow.basedir, "schemas", "config.schema.yaml")
with open(SCHEMA_PATH) as _schema_file:
    check_config(config, yaml.safe_load(_schema_file))
validate(config, SCHEMA_PATH)
_missing_weights = missing_weight_files(config)
if _missing_weights:
    raise ConfigError("invalid configuration:\n  " + "\n  ".join(_missing_weights))


def _sorted_mapping(value):
    if isinstance(value, dict):
        return {key: _sorted_mapping(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_mapping(item) for item in value]
    return value


# Rule params (and the options built from them) follow the config's key order; sorting it here
# makes reordering keys in config.yaml a no-op instead of a rerun of every stage.
_canonical_config = _sorted_mapping(config)
config.clear()
config.update(_canonical_config)

DATASET = config["dataset"]["name"]
TRAIN_SPLIT = config["dataset"]["train_split"]
VAL_SPLIT = config["dataset"]["val_split"]
SEED_SPLIT = TRAIN_SPLIT
NUM_SHARDS = config["shards"]
EXPERIMENTS = config["experiments"]
RESOURCES = config["resources"]
GPU = 1 if config["gpu_available"] else 0


FULL = "full"  # experiments' reserved seeds name: the segmentation network on ground-truth masks
SEGMENTATION = config["segmentation"]


wildcard_constraints:
    dataset=DATASET,
    classifier="|".join(config["classifiers"]),
    seeds="|".join(config["seeds"]),
    masks="|".join([*config["seeds"], FULL]),
    seg_stage="segmentation|segmentation_crf",
    split="[A-Za-z0-9_]+",
    shard=r"\d+",
    seed_stage="seeds|seeds_crf",


def cli_value(value):
    if isinstance(value, (list, tuple)):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def cli_options(settings, skip=()):
    """Turns a config section into `--key value` options (booleans as `--key` / `--no-key`)."""
    options = []
    for key, value in settings.items():
        if key in skip or value is None:
            continue
        name = key.replace("_", "-")
        if isinstance(value, bool):
            options.append(f"--{name}" if value else f"--no-{name}")
        else:
            options.append(f"--{name} {cli_value(value)}")
    return " ".join(options)


def dataset_root_input(wildcards):
    """The generated dataset is a rule's output; other datasets are read where they are."""
    return [config["dataset"]["root"]] if config["dataset"]["kind"] == "generated" else []


def seeds_stage_settings(section, wildcards):
    """A config section as it applies to one seeds entry: `<section>.per_seeds.<seeds>` over the rest.

    Rule params hold exactly this, so an override reruns that entry's stages only, and an override
    equal to the shared value reruns nothing.
    """
    settings = {key: value for key, value in config[section].items() if key != "per_seeds"}
    settings.update(config[section]["per_seeds"].get(wildcards.seeds, {}))
    return dict(sorted(settings.items()))


def classifier_settings(wildcards):
    return config["classifiers"][wildcards.classifier]


def seed_settings(wildcards):
    return config["seeds"][wildcards.seeds]


SEED_MODULES = {
    "cam": "wsss_steps.cam_seeds",
    "advcam": "wsss_steps.advcam",
    "advcam_sal": "wsss_steps.advcam",
}


def seed_inputs(wildcards):
    settings = seed_settings(wildcards)
    return {"saliency": settings["saliency"]} if "saliency" in settings else {}


def shard_paths(wildcards):
    return expand(
        "results/{dataset}/seeds/{classifier}/{seeds}/shards/shard-{shard}-of-{n}.h5",
        dataset=wildcards.dataset,
        classifier=wildcards.classifier,
        seeds=wildcards.seeds,
        shard=range(NUM_SHARDS),
        n=NUM_SHARDS,
    )


def has_segmentation(experiment):
    """Full supervision always; otherwise when asked for and pseudo masks exist to train on."""
    if experiment["seeds"] == FULL:
        return True
    return experiment.get("segmentation", True) and experiment.get("pseudo_masks", True)


SEGMENTATION_EXPERIMENTS = [e for e in EXPERIMENTS if has_segmentation(e)]


def experiment_stages(experiment):
    """The evaluated stages of an experiment, in pipeline order."""
    stages = []
    if experiment["seeds"] != FULL:
        stages += ["seeds", "seeds_crf"] if config["evaluation"]["seeds"]["crf"] else ["seeds"]
        if experiment.get("pseudo_masks", True):
            stages += ["pseudo_masks", "pseudo_masks_crf"] if config["pseudo_masks"]["crf"] else ["pseudo_masks"]
    if has_segmentation(experiment):
        stages += ["segmentation", "segmentation_crf"] if SEGMENTATION["crf"] else ["segmentation"]
    return stages


def summary_row_files():
    rows = [
        f"results/{DATASET}/classifier/{name}/summary_rows.csv"
        for name in sorted({e["classifier"] for e in EXPERIMENTS})
    ]
    for experiment in EXPERIMENTS:
        for stage in experiment_stages(experiment):
            rows.append(
                f"results/{DATASET}/eval/{stage}/{experiment['classifier']}/{experiment['seeds']}/summary_rows.csv"
            )
    return rows


# Segmentation (rules/segmentation.smk)

SEGMENTATION_INFERENCE_KEYS = ("test_scales", "flip", "crf")
SEGMENTATION_TRAINING = {
    k: v
    for k, v in SEGMENTATION.items()
    if k not in (*SEGMENTATION_INFERENCE_KEYS, "init_from_classifier", "checkpoint_every")
}


def segmentation_train_inputs(wildcards):
    inputs = {}
    if SEGMENTATION["init_from_classifier"]:
        inputs["classifier"] = f"results/{wildcards.dataset}/classifier/{wildcards.classifier}/model.pt"
    if wildcards.masks != FULL:
        inputs["masks"] = (
            f"results/{wildcards.dataset}/pseudo_masks/{wildcards.classifier}/{wildcards.masks}/masks.h5"
        )
    return inputs


def segmentation_sources(wildcards, input):
    init = f"--init-classifier {input.classifier}" if SEGMENTATION["init_from_classifier"] else ""
    masks = "--ground-truth" if wildcards.masks == FULL else f"--masks {input.masks}"
    return f"{masks} {init}"


def segmentation_shard_paths(wildcards):
    return expand(
        "results/{dataset}/segmentation/{classifier}/{masks}/shards/shard-{shard}-of-{n}.h5",
        dataset=wildcards.dataset,
        classifier=wildcards.classifier,
        masks=wildcards.masks,
        shard=range(NUM_SHARDS),
        n=NUM_SHARDS,
    )


# Report (rules/report.smk)

def sweep_curves(wildcards):
    """The swept stages of an experiment (seeds, +CRF, pseudo masks) and their curve files."""
    experiment = {"classifier": wildcards.classifier, "seeds": wildcards.masks}
    experiment.update(next(e for e in EXPERIMENTS if e["classifier"] == wildcards.classifier
                           and e["seeds"] == wildcards.masks))
    swept = [s for s in experiment_stages(experiment) if s in ("seeds", "seeds_crf", "pseudo_masks")]
    return {
        stage: f"results/{wildcards.dataset}/eval/{stage}/{wildcards.classifier}/{wildcards.masks}/curve.csv"
        for stage in swept
    }


def per_class_tables(wildcards):
    experiment = next(e for e in EXPERIMENTS if e["classifier"] == wildcards.classifier
                      and e["seeds"] == wildcards.masks)
    return {
        stage: f"results/{wildcards.dataset}/eval/{stage}/{wildcards.classifier}/{wildcards.masks}/per_class.csv"
        for stage in experiment_stages(experiment)
    }


def gallery_inputs(wildcards):
    base = f"results/{wildcards.dataset}"
    inputs = {
        "model": f"{base}/segmentation/{wildcards.classifier}/{wildcards.masks}/model.pt",
        "manifest": f"{base}/data/{SEED_SPLIT}.csv",
    }
    if wildcards.masks != FULL:
        inputs["seeds"] = f"{base}/seeds/{wildcards.classifier}/{wildcards.masks}/maps.h5"
        inputs["seeds_rows"] = f"{base}/eval/seeds/{wildcards.classifier}/{wildcards.masks}/summary_rows.csv"
        inputs["pseudo_masks"] = f"{base}/pseudo_masks/{wildcards.classifier}/{wildcards.masks}/masks.h5"
    return inputs


def pairs(mapping):
    return " ".join(f"{name}={path}" for name, path in mapping.items())


def report_files():
    files = [f"results/{DATASET}/report/stages.html"]
    for experiment in SEGMENTATION_EXPERIMENTS:
        folder = f"results/{DATASET}/report/{experiment['classifier']}/{experiment['seeds']}"
        files += [f"{folder}/per_class.png", f"{folder}/gallery.png"]
        if experiment["seeds"] != FULL:
            files.append(f"{folder}/sweep.png")
        png = f"results/{DATASET}/segmentation/{experiment['classifier']}/{experiment['seeds']}"
        files += [f"{png}/png", f"{png}/png_crf"] if SEGMENTATION["crf"] else [f"{png}/png"]
    return files
