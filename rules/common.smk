import json
import os
import shlex
import sys

import yaml
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
# Jobs (local, in a conda env, or on cluster nodes) import the steps from this checkout.
shell.prefix(f"export PYTHONPATH={shlex.quote(workflow.basedir)}:$PYTHONPATH; ")

from wsss_steps.config_check import check_config  # noqa: E402

SCHEMA_PATH = os.path.join(workflow.basedir, "schemas", "config.schema.yaml")
with open(SCHEMA_PATH) as _schema_file:
    check_config(config, yaml.safe_load(_schema_file))
validate(config, SCHEMA_PATH)

DATASET = config["dataset"]["name"]
TRAIN_SPLIT = config["dataset"]["train_split"]
VAL_SPLIT = config["dataset"]["val_split"]
SEED_SPLIT = TRAIN_SPLIT
NUM_SHARDS = config["shards"]
EXPERIMENTS = config["experiments"]
RESOURCES = config["resources"]
GPU = 1 if config["gpu_available"] else 0


wildcard_constraints:
    dataset=DATASET,
    classifier="|".join(config["classifiers"]),
    seeds="|".join(config["seeds"]),
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


def summary_row_files():
    rows = [
        f"results/{DATASET}/classifier/{name}/summary_rows.csv"
        for name in sorted({e["classifier"] for e in EXPERIMENTS})
    ]
    seed_stages = ["seeds", "seeds_crf"] if config["evaluation"]["seeds"]["crf"] else ["seeds"]
    mask_stages = ["pseudo_masks", "pseudo_masks_crf"] if config["pseudo_masks"]["crf"] else ["pseudo_masks"]
    for experiment in EXPERIMENTS:
        stages = seed_stages + (mask_stages if experiment["pseudo_masks"] else [])
        for stage in stages:
            rows.append(
                f"results/{DATASET}/eval/{stage}/{experiment['classifier']}/{experiment['seeds']}/summary_rows.csv"
            )
    return rows
