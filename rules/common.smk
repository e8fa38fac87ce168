import functools
import os
import shlex
import sys

from snakemake.logging import logger

sys.path.insert(0, workflow.basedir)

from wsss_steps.data.adapters import open_dataset  # noqa: E402
from wsss_steps.workflow import inputs, options as opts, targets  # noqa: E402
from wsss_steps.workflow.config import FULL_SUPERVISION, config_files_in_use  # noqa: E402
from wsss_steps.workflow.options import cli_options, pairs, path_option, training_params  # noqa: E402
from wsss_steps.workflow.startup import load_run_configs, run_startup_checks  # noqa: E402
from wsss_steps.workflow.targets import alternatives, entry_names  # noqa: E402

# Several datasets in one run: this config's dataset, and one more per file of `datasets_from`
# (each a whole config of its own), each checked and validated, keys sorted (workflow.startup).
# Rules take the dataset from their {dataset} wildcard and read its config through
# dataset_config(); the run-level keys (device, gpu_available, shards, resources) are this config's.
_settings = workflow.config_settings
DATASET_CONFIGS = load_run_configs(
    config,
    os.path.join(workflow.basedir, "schemas", "config.schema.yaml"),
    config_files_in_use(workflow.configfiles, _settings.configfiles, _settings.replace_workflow_config),
    overrides=_settings.overwrite_config,
    replaced=_settings.replace_workflow_config,
    log=logger.info if workflow.is_main_process else None,
)
config.clear()
config.update(next(iter(DATASET_CONFIGS.values())))


def dataset_config(wildcards):
    """The config of a dataset: by name, or of a job's {dataset} wildcard."""
    return DATASET_CONFIGS[wildcards if isinstance(wildcards, str) else wildcards.dataset]


DATASETS = {name: settings["dataset"] for name, settings in DATASET_CONFIGS.items()}
# Generated datasets: their roots are generate_dataset's outputs (rules/data.smk).
GENERATED_DATASETS = {name: d for name, d in DATASETS.items() if d["kind"] == "generated"}
NUM_SHARDS = config["shards"]


def shard_output(path):
    """An inference shard's file: kept (keep_shards: true), or deleted once merged (temp)."""
    return path if config["keep_shards"] else temp(path)


RESOURCES = config["resources"]
GPU = 1 if config["gpu_available"] else 0
# Jobs (local, in a conda env, or on cluster nodes) import the steps from this checkout. Training
# steps' data-loading workers (resources.data_workers) reach them as an environment variable, not
# in their command lines: the weights do not depend on it, and a command line's text is part of
# what Snakemake's `code` trigger compares (a changed line reruns the rule's jobs).
shell.prefix(
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}:$PYTHONPATH; "
    f"export WSSS_DATA_WORKERS={int(RESOURCES['data_workers'])}; "
)
# Every rule that runs a network (training, and the inference of seeds, saliency, the random walk,
# segmentation, weight maps, WSOL's Top-1 Loc) declares `gpu=GPU`, and its jobs take --device
# DEVICE: `cuda` where they ask for a GPU and the config says auto, so that a job on a node whose
# GPU torch cannot use fails at its start instead of running for hours on the CPU.
DEVICE = opts.job_device(config["device"], GPU)
# slurm_partition of the rules that declare gpu=GPU, and of the others (empty keys: none, so the
# profile's default-resources apply). Each rule's runtime grows with the attempt
# (opts.runtime_per_attempt): the SLURM profile retries a failed job.
GPU_RULE_PARTITION = opts.partition(RESOURCES, GPU)
CPU_RULE_PARTITION = opts.partition(RESOURCES, 0)


@functools.cache
def dataset_adapter(name):
    """A user's dataset's adapter, opened once per workflow run (COCO's annotation files are large)."""
    return open_dataset(DATASETS[name])


if workflow.is_main_process:
    # Once, before planning (a cluster job re-parses this file and skips them): manifests whose
    # sources changed content marked out of date; splits, masks, ground-truth subsets checked.
    run_startup_checks(DATASET_CONFIGS, dataset_adapter, log=logger.info)


SEED_NAMES = entry_names(DATASET_CONFIGS, "seeds")
SALIENCY_BACKGROUND_SEED_NAMES = targets.saliency_background_seed_names(DATASET_CONFIGS)
COMPUTED_SEED_NAMES = targets.computed_seed_names(DATASET_CONFIGS)
SEMI_SUPERVISED_NAMES = targets.semi_supervised_names(DATASET_CONFIGS)
WEIGHT_MAP_NAMES = entry_names(DATASET_CONFIGS, "weight_maps")
WSOL_SEED_NAMES = targets.wsol_seed_names(DATASET_CONFIGS)


wildcard_constraints:
    dataset=alternatives(DATASETS),
    classifier=alternatives(entry_names(DATASET_CONFIGS, "classifiers")),
    seeds=alternatives(SEED_NAMES),
    # A segmentation network's name: an experiment's seeds name, `full` (the network on
    # ground-truth masks) or `<seeds>+<subset file's stem>` (semi-supervised). Not renamed: the
    # shell lines say {wildcards.masks}, and Snakemake reruns a job whose shell line changed
    # (rerun trigger `code`).
    masks=alternatives([*SEED_NAMES, FULL_SUPERVISION, *SEMI_SUPERVISED_NAMES]),
    sweep_stage="seeds|seeds_crf|pseudo_masks|pseudo_masks_crf",
    seg_stage="segmentation|segmentation_crf",
    split="[A-Za-z0-9_]+",
    shard=r"\d+",
    # A seeds name, `full`, a semi-supervised network's name or a weight_maps name.
    entry=alternatives([*SEED_NAMES, FULL_SUPERVISION, *SEMI_SUPERVISED_NAMES, *WEIGHT_MAP_NAMES]),
    saliency=alternatives(entry_names(DATASET_CONFIGS, "saliency")),


def with_config(function):
    """An input function of a job's wildcards: ``function(the job's dataset's config, wildcards)``
    (the functions of wsss_steps.workflow.inputs)."""
    return lambda wildcards: function(dataset_config(wildcards), wildcards)


def saliency_entries(wildcards):
    return targets.saliency_entries(dataset_config(wildcards))


def saliency_background_seeds(wildcards):
    """Seeds with a saliency background (made by saliency_seeds; the others by seeds_shard)."""
    return targets.saliency_background_seeds(dataset_config(wildcards))


def semi_supervised(wildcards):
    """A dataset's semi-supervised segmentation networks by name: their seeds and subset file."""
    return targets.semi_supervised(dataset_config(wildcards))


# Datasets, splits and manifests (rules/data.smk)


def dataset_settings(wildcards):
    return DATASETS[wildcards.dataset]


def seed_split(wildcards):
    """The split seeds, affinity labels, random walk and pseudo masks are computed and evaluated on."""
    return inputs.seed_split(dataset_config(wildcards))


def val_split(wildcards):
    return inputs.val_split(dataset_config(wildcards))


def masks_required(wildcards):
    """prepare_data's --require-masks: a generated dataset's seed split (it has every mask). A
    user's dataset's masks are checked when the workflow starts, where something reads them
    (startup.check_masks), so this flag never changes with the experiments."""
    return wildcards.dataset in GENERATED_DATASETS and wildcards.split == seed_split(wildcards)


train_manifest = with_config(inputs.train_manifest)
val_manifest = with_config(inputs.val_manifest)
seed_manifest = with_config(inputs.seed_manifest)


def dataset_source_files(wildcards):
    """What a split's manifest is built from: the generated dataset's folder (a rule's output), or
    every file of a user's dataset the manifest reads (split list, classes, labels, images, masks),
    so editing any of them reruns prepare_data and what depends on it, and nothing else."""
    if wildcards.dataset in GENERATED_DATASETS:
        return [DATASETS[wildcards.dataset]["root"]]
    return [str(path) for path in dataset_adapter(wildcards.dataset).source_files(wildcards.split)]


# Map stages (rules/maps.smk, seeds.smk, wsol.smk), networks and their inputs


def shard_files(wildcards):
    return inputs.shard_files(wildcards, NUM_SHARDS)


def saliency_shard_files(wildcards):
    return inputs.saliency_shard_files(wildcards, NUM_SHARDS)


map_stage_manifest = with_config(inputs.map_stage_manifest)
classifier_inputs = with_config(inputs.classifier_inputs)
seed_inputs = with_config(inputs.seed_inputs)
saliency_background_inputs = with_config(inputs.saliency_background_inputs)
saliency_train_inputs = with_config(inputs.saliency_train_inputs)
segmentation_train_inputs = with_config(inputs.segmentation_train_inputs)
semi_supervised_method = with_config(inputs.semi_supervised_method)
wsol_eval_inputs = with_config(inputs.wsol_eval_inputs)
wsol_threshold = with_config(inputs.wsol_threshold)
sweep_maps = with_config(inputs.sweep_maps)


def seeds_stage_settings(section, wildcards):
    """`<section>.per_seeds.<seeds>` over the rest (options.seeds_stage_settings)."""
    return opts.seeds_stage_settings(dataset_config(wildcards)[section], wildcards.seeds)


def affinity_settings(wildcards):
    background = wildcards.seeds in saliency_background_seeds(wildcards)
    return opts.affinity_settings(dataset_config(wildcards)["affinity"], wildcards.seeds, background)


def classifier_settings(wildcards):
    return dataset_config(wildcards)["classifiers"][wildcards.classifier]


def seed_settings(wildcards):
    return dataset_config(wildcards)["seeds"][wildcards.seeds]


def saliency_settings(wildcards):
    return saliency_entries(wildcards)[wildcards.saliency]


def wsol_settings(wildcards):
    return targets.wsol_settings(dataset_config(wildcards))


def weight_maps(wildcards):
    return inputs.weight_maps(dataset_config(wildcards))


# Evaluations (rules/evaluation.smk)

def sweep_options(wildcards):
    """A swept stage's options: exactly the evaluation settings its command uses (options.sweep_options)."""
    background = wildcards.seeds in saliency_background_seeds(wildcards)
    walk_threshold = seeds_stage_settings("random_walk", wildcards)["sem_seg_bg_thres"]
    return opts.sweep_options(wildcards.sweep_stage, dataset_config(wildcards)["evaluation"], background,
                              walk_threshold)


def sweep_shard_files(wildcards):
    return targets.sweep_shard_files(wildcards.dataset, dataset_config(wildcards), wildcards.sweep_stage,
                                     wildcards.classifier, wildcards.seeds)


# evaluation.shards: a dataset's sweeps are made by evaluate_sweep (1) or by evaluate_sweep_shard
# jobs and merge_sweep (> 1); each rule's {dataset} takes only its datasets.
UNSHARDED_EVALUATION = alternatives(targets.sharded_evaluation_datasets(DATASET_CONFIGS, sharded=False))
SHARDED_EVALUATION = alternatives(targets.sharded_evaluation_datasets(DATASET_CONFIGS, sharded=True))

# pseudo_masks.shards: a dataset's pseudo masks (masks.h5 and png/) are made by pseudo_masks (1) or
# by pseudo_masks_shard jobs and merge_pseudo_masks (> 1); each rule's {dataset} takes only its
# datasets.
UNSHARDED_PSEUDO_MASKS = alternatives(targets.sharded_pseudo_mask_datasets(DATASET_CONFIGS, sharded=False))
SHARDED_PSEUDO_MASKS = alternatives(targets.sharded_pseudo_mask_datasets(DATASET_CONFIGS, sharded=True))


def pseudo_mask_settings(wildcards):
    """The pseudo_masks section as its commands use it (options.pseudo_mask_settings)."""
    return opts.pseudo_mask_settings(dataset_config(wildcards)["pseudo_masks"])


def pseudo_mask_shard_files(wildcards):
    return targets.pseudo_mask_shard_files(wildcards.dataset, dataset_config(wildcards), wildcards.classifier,
                                           wildcards.seeds)


def sweep_threads(wildcards):
    background = wildcards.seeds in saliency_background_seeds(wildcards)
    return opts.sweep_threads(wildcards.sweep_stage, dataset_config(wildcards)["evaluation"], background)


# Segmentation (rules/segmentation.smk)


def segmentation_settings(wildcards):
    return dataset_config(wildcards)["segmentation"]


# Report (rules/report.smk)


def experiment_files(wildcards, name, stages=None):
    """The report's experiment ({classifier}, {masks}): its evaluation file `name` of each stage."""
    return targets.experiment_files(wildcards.dataset, dataset_config(wildcards), wildcards.classifier,
                                    wildcards.masks, name, stages)
