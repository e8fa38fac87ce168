import functools
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.logging import logger
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
# Jobs (local, in a conda env, or on cluster nodes) import the steps from this checkout.
shell.prefix(f"export PYTHONPATH={shlex.quote(workflow.basedir)}:$PYTHONPATH; ")

from wsss_steps.data.adapters import open_dataset  # noqa: E402
from wsss_steps.data.sources import invalidate_changed_manifest  # noqa: E402
from wsss_steps.workflow.config import (  # noqa: E402
    ConfigError,
    check_config,
    check_dataset_configs,
    config_files_in_use,
    generated_split_ids,
    ground_truth_subset,
    ground_truth_subset_problems,
    inherited_generator,
    invalid,
    missing_splits,
    missing_weight_files,
    needs_seed_masks,
    read_config_file,
    schema_problems,
    segmentation_name,
)

SCHEMA_PATH = os.path.join(workflow.basedir, "schemas", "config.schema.yaml")
with open(SCHEMA_PATH) as _schema_file:
    SCHEMA = yaml.safe_load(_schema_file)


def _sorted_mapping(value):
    if isinstance(value, dict):
        return {key: _sorted_mapping(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_mapping(item) for item in value]
    return value


def _checked(settings, files):
    """A config checked (every problem named) and validated (schema defaults filled in), its keys
    sorted: rule params (and the options built from them) follow the key order, so reordering
    keys in a config file is a no-op instead of a rerun of every stage."""
    check_config(settings, SCHEMA, files)
    problems = schema_problems(settings, SCHEMA)
    if problems:
        raise invalid(problems, files)
    validate(settings, SCHEMA_PATH)
    missing = missing_weight_files(settings)
    if missing:
        raise invalid(missing, files)
    return _sorted_mapping(settings)


_settings = workflow.config_settings
if not _settings.replace_workflow_config and inherited_generator(config, _settings.overwrite_config):
    del config["dataset"]["generator"]  # config.yaml's, merged into a dataset of another kind
    if workflow.is_main_process:
        logger.info(f"dataset.generator of config.yaml is not read: dataset.kind is {config['dataset']['kind']} "
                    "(--configfile and --config are merged into config.yaml; --replace-workflow-config replaces it)")
_canonical_config = _checked(config, config_files_in_use(workflow.configfiles, _settings.configfiles,
                                                         _settings.replace_workflow_config))
config.clear()
config.update(_canonical_config)

# Several datasets in one run: this config's dataset, and one more per file of `datasets_from`
# (each a whole config of its own: its dataset, entries, experiments and stage settings). Rules
# take the dataset from their {dataset} wildcard and read its config through dataset_config();
# the run-level keys (device, gpu_available, shards, resources) are this config's.
DATASET_CONFIGS = {config["dataset"]["name"]: config}
for _path in config.get("datasets_from", []):
    _other = _checked(read_config_file(_path), (_path,))
    if _other.get("datasets_from"):
        raise ConfigError(f"{_path}: datasets_from is read from the main config only, not from {_path}")
    if _other["dataset"]["name"] in DATASET_CONFIGS:
        raise ConfigError(f"{_path}: dataset name {_other['dataset']['name']!r} is already in this run; "
                          "each dataset needs its own name (results/<name>/)")
    DATASET_CONFIGS[_other["dataset"]["name"]] = _other
_cross_problems = check_dataset_configs(DATASET_CONFIGS)
if _cross_problems:
    raise ConfigError("invalid configuration:\n  " + "\n  ".join(_cross_problems))


def dataset_config(wildcards):
    """The config of a dataset: by name, or of a job's {dataset} wildcard."""
    return DATASET_CONFIGS[wildcards if isinstance(wildcards, str) else wildcards.dataset]


DATASETS = {name: settings["dataset"] for name, settings in DATASET_CONFIGS.items()}
NUM_SHARDS = config["shards"]
RESOURCES = config["resources"]
GPU = 1 if config["gpu_available"] else 0


def experiments(dataset):
    return DATASET_CONFIGS[dataset]["experiments"]


def _names(section):
    """Every dataset's entries of a config section (the wildcards' constraints)."""
    return list(dict.fromkeys(name for c in DATASET_CONFIGS.values() for name in c.get(section) or {}))


FULL = "full"  # experiments' reserved seeds name: the segmentation network on ground-truth masks


def saliency_entries(wildcards):
    return dataset_config(wildcards).get("saliency") or {}


def derived_seeds(wildcards):
    """Seeds entries that take another entry's maps with a saliency background (rule
    saliency_seeds); the others are computed from a classifier (rule seeds_shard). A name means
    the same kind of entry in every dataset of the run (check_dataset_configs)."""
    return {name: s for name, s in dataset_config(wildcards)["seeds"].items() if s["method"] == "saliency_background"}


DERIVED_SEED_NAMES = [name for d in DATASETS for name in derived_seeds(d)]
COMPUTED_SEED_NAMES = [name for name in _names("seeds") if name not in DERIVED_SEED_NAMES]
NEVER = "(?!)"  # the constraint of a wildcard whose config section is empty


def semi_supervised(wildcards):
    """A dataset's semi-supervised segmentation networks by name: their seeds and subset file."""
    return {segmentation_name(e): (e["seeds"], ground_truth_subset(e))
            for e in dataset_config(wildcards)["experiments"] if ground_truth_subset(e)}


SEMI_SUPERVISED_NAMES = list(dict.fromkeys(name for d in DATASETS for name in semi_supervised(d)))


def masks_seeds(wildcards):
    """The seeds entry whose pseudo masks a segmentation network trains on (`full`: none)."""
    semi = semi_supervised(wildcards)
    return semi[wildcards.masks][0] if wildcards.masks in semi else wildcards.masks


def _alternatives(names):
    return "|".join(re.escape(name) for name in names) or NEVER


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    classifier=_alternatives(_names("classifiers")),
    seeds=_alternatives(_names("seeds")),
    masks=_alternatives([*_names("seeds"), FULL, *SEMI_SUPERVISED_NAMES]),
    sweep_stage="seeds|seeds_crf|pseudo_masks|pseudo_masks_crf",
    seg_stage="segmentation|segmentation_crf",
    split="[A-Za-z0-9_]+",
    shard=r"\d+",
    # A seeds name, `full` (the segmentation network on ground-truth masks), a semi-supervised
    # network's name or a weight_maps name.
    entry=_alternatives([*_names("seeds"), FULL, *SEMI_SUPERVISED_NAMES, *_names("weight_maps")]),
    saliency=_alternatives(_names("saliency")),


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


# Datasets and their splits (rules/data.smk)

# Generated datasets: their roots are generate_dataset's outputs.
GENERATED_DATASETS = {name: d for name, d in DATASETS.items() if d["kind"] == "generated"}


@functools.cache
def dataset_adapter(name):
    """A user's dataset's adapter, opened once per workflow run (COCO's annotation files are large)."""
    return open_dataset(DATASETS[name])


def dataset_settings(wildcards):
    return DATASETS[wildcards.dataset]


def train_split(wildcards):
    """The split the classifier (and the segmentation network) trains on."""
    return dataset_settings(wildcards)["train_split"]


def val_split(wildcards):
    return dataset_settings(wildcards)["val_split"]


def seed_split(wildcards):
    """The split seeds, affinity labels, random walk and pseudo masks are computed and evaluated on."""
    return train_split(wildcards)


def masks_required(wildcards):
    """prepare_data's --require-masks: a generated dataset's seed split (it has every mask). A
    user's dataset's masks are checked when the workflow starts, where something reads them
    (`check_masks`), so this flag never changes with the experiments."""
    return wildcards.dataset in GENERATED_DATASETS and wildcards.split == seed_split(wildcards)


def manifest(wildcards, split):
    return f"results/{wildcards.dataset}/data/{split}.csv"


def train_manifest(wildcards):
    return manifest(wildcards, train_split(wildcards))


def val_manifest(wildcards):
    return manifest(wildcards, val_split(wildcards))


def seed_manifest(wildcards):
    return manifest(wildcards, seed_split(wildcards))


def dataset_source_files(wildcards):
    """What a split's manifest is built from: the generated dataset's folder (a rule's output), or
    every file of a user's dataset the manifest reads (split list, classes, labels, images, masks),
    so editing any of them reruns prepare_data and what depends on it, and nothing else."""
    if wildcards.dataset in GENERATED_DATASETS:
        return [DATASETS[wildcards.dataset]["root"]]
    return [str(path) for path in dataset_adapter(wildcards.dataset).source_files(wildcards.split)]


def invalidate_changed_manifests():
    """Before planning, in the main process only: a manifest whose source files changed content
    since prepare_data wrote it is marked out of date, whatever the files' modification times
    (a copy made with `cp -p`, `rsync -a` or from a tar archive keeps an old one)."""
    for name in DATASETS:
        for manifest_path in sorted(Path("results", name, "data").glob("*.csv")):
            changed = invalidate_changed_manifest(manifest_path)
            if changed:
                logger.info(f"dataset {name}: {len(changed)} file(s) of split {manifest_path.stem} changed content "
                            f"since its manifest was written (e.g. {changed[0]}); prepare_data reruns")


if workflow.is_main_process:
    invalidate_changed_manifests()


# Map stages (rules/maps.smk): inferred in shards, each over one split, then merged by merge_maps.
# Entries are seeds names (and `full` for segmentation); segmentation predicts the val split,
# the other stages cover the seed split.
MAP_STAGE_SPLITS = {"seeds": seed_split, "affinity_labels": seed_split, "random_walk": seed_split,
                    "segmentation": val_split}


def shard_files(wildcards):
    """The NUM_SHARDS shard files of one stage's maps, in shard order (merge_maps' input)."""
    return expand(
        "results/{dataset}/{map_stage}/{classifier}/{entry}/shards/shard-{shard}-of-{n}.h5",
        dataset=wildcards.dataset,
        map_stage=wildcards.map_stage,
        classifier=wildcards.classifier,
        entry=wildcards.entry,
        shard=range(NUM_SHARDS),
        n=NUM_SHARDS,
    )


def map_stage_manifest(wildcards):
    if wildcards.map_stage in WSOL_PARTS:
        return wsol_part_manifest(wildcards)
    return manifest(wildcards, MAP_STAGE_SPLITS[wildcards.map_stage](wildcards))


def seeds_stage_settings(section, wildcards):
    """A config section as it applies to one seeds entry: `<section>.per_seeds.<seeds>` over the rest.

    Rule params hold exactly this, so an override reruns that entry's stages only, and an override
    equal to the shared value reruns nothing.
    """
    section_settings = dataset_config(wildcards)[section]
    settings = {key: value for key, value in section_settings.items() if key != "per_seeds"}
    settings.update(section_settings["per_seeds"].get(wildcards.seeds, {}))
    return dict(sorted(settings.items()))


def affinity_settings(wildcards):
    """The affinity section for one seeds entry: IRN's two thresholds, or for seeds with a saliency
    background P-NOC's saliency-aware rule (its thresholds only)."""
    settings = seeds_stage_settings("affinity", wildcards)
    derived = wildcards.seeds in derived_seeds(wildcards)
    unused = ("conf_fg", "conf_bg") if derived else ("sal_bg_threshold", "sal_fg_threshold")
    return {k: v for k, v in settings.items() if k not in unused}


def affinity_saliency_option(wildcards, input):
    """Seeds with a saliency background carry the saliency in their own file."""
    return f"--saliency {shlex.quote(input.seeds)}" if wildcards.seeds in derived_seeds(wildcards) else ""


def classifier_settings(wildcards):
    return dataset_config(wildcards)["classifiers"][wildcards.classifier]


def classifier_inputs(wildcards):
    """The training and validation manifests (a softmax classifier's: the WSOL images of the
    train and val splits), and the ordinary classifier's model where the variant reads one
    (OC-CSE, P-OC, P-NOC): another entry's artifact, trained once."""
    if classifier_settings(wildcards).get("loss") == "softmax":
        inputs = {"train": wsol_manifest(wildcards, train_split(wildcards)),
                  "val": wsol_manifest(wildcards, val_split(wildcards))}
    else:
        inputs = {"train": train_manifest(wildcards), "val": val_manifest(wildcards)}
    ordinary = classifier_settings(wildcards).get("ordinary")
    if ordinary:
        inputs["ordinary"] = f"results/{wildcards.dataset}/classifier/{ordinary}/model.pt"
    return inputs


def ordinary_option(wildcards, input):
    return f"--ordinary {shlex.quote(input.ordinary)}" if "ordinary" in input.keys() else ""


def seed_settings(wildcards):
    return dataset_config(wildcards)["seeds"][wildcards.seeds]


def saliency_maps_file(wildcards, entry):
    return f"results/{wildcards.dataset}/saliency/{entry}/maps.h5"


def seed_inputs(wildcards):
    """AdvCAM-Sal reads its saliency entry's maps."""
    settings = seed_settings(wildcards)
    return {"saliency": saliency_maps_file(wildcards, settings["saliency"])} if settings.get("saliency") else {}


def seed_options(wildcards, input):
    options = cli_options(seed_settings(wildcards), skip=("saliency",))
    if "saliency" in input.keys():
        options += f" --saliency {shlex.quote(input.saliency)}"
    return options


def derived_seed_inputs(wildcards):
    """Seeds with a saliency background: the seeds entry they take and the saliency entry's maps."""
    settings = derived_seeds(wildcards)[wildcards.seeds]
    return {
        "seeds": f"results/{wildcards.dataset}/seeds/{wildcards.classifier}/{settings['seeds']}/maps.h5",
        "saliency": saliency_maps_file(wildcards, settings["saliency"]),
    }


def derived_seed_map(wildcards):
    """Which saliency is the background: `saliency_map`, by default P-NOC's (the dCRF-refined
    pseudo-saliency mask of C²AM and C²AM-H, the refinement network's map)."""
    settings = derived_seeds(wildcards)[wildcards.seeds]
    choice = settings.get("saliency_map") or "auto"
    if choice == "auto":
        choice = "map" if saliency_entries(wildcards)[settings["saliency"]]["method"] == "refined" else "mask"
    return "saliency" if choice == "map" else "saliency_mask"


# Saliency (rules/saliency.smk): trained and inferred on the seed split; evaluated there.
SALIENCY_INFERENCE_KEYS = ("scales", "flip", "mask_threshold", "crf", "crf_iterations", "crf_gt_prob")
SALIENCY_REFERENCE_KEYS = ("method", "classifier", "seeds", "source")


def saliency_settings(wildcards):
    return saliency_entries(wildcards)[wildcards.saliency]


def saliency_training(wildcards):
    """What shapes the trained saliency network (a param: changed, it retrains)."""
    return {k: v for k, v in saliency_settings(wildcards).items()
            if k not in (*SALIENCY_INFERENCE_KEYS, "checkpoint_every")}


def saliency_inference(wildcards):
    return {k: v for k, v in saliency_settings(wildcards).items() if k in SALIENCY_INFERENCE_KEYS}


def saliency_train_inputs(wildcards):
    """C²AM-H reads its hint seeds, the refinement network its source entry's maps."""
    settings = saliency_settings(wildcards)
    inputs = {"manifest": seed_manifest(wildcards)}
    if settings["method"] == "c2am_h":
        inputs["hints"] = f"results/{wildcards.dataset}/seeds/{settings['classifier']}/{settings['seeds']}/maps.h5"
    if settings["method"] == "refined":
        inputs["masks"] = saliency_maps_file(wildcards, settings["source"])
    return inputs


def saliency_train_options(wildcards, input):
    options = cli_options(saliency_training(wildcards), skip=SALIENCY_REFERENCE_KEYS)
    for name in ("hints", "masks"):
        if name in input.keys():
            options += f" --{name} {shlex.quote(input[name])}"
    return f"--method {saliency_settings(wildcards)['method']} {options}"


def saliency_shard_files(wildcards):
    return expand("results/{dataset}/saliency/{saliency}/shards/shard-{shard}-of-{n}.h5",
                  dataset=wildcards.dataset, saliency=wildcards.saliency, shard=range(NUM_SHARDS), n=NUM_SHARDS)


def hint_seeds(dataset):
    """(classifier, seeds) of every C²AM-H entry's hints, once each: their own foreground is scored
    beside the saliency it taught."""
    return sorted({(s["classifier"], s["seeds"]) for s in saliency_entries(dataset).values() if s["method"] == "c2am_h"})


def saliency_row_files(dataset):
    rows = [f"results/{dataset}/eval/saliency/{name}/summary_rows.csv" for name in saliency_entries(dataset)]
    rows += [f"results/{dataset}/eval/saliency_hints/{c}/{s}/summary_rows.csv" for c, s in hint_seeds(dataset)]
    return rows


# WSOL (rules/wsol.smk): maps of the WSOL images of two splits (the box threshold is calibrated on
# the first, applied to the second), from seeds entries (cam, advcam) or weight_maps entries.
def wsol_settings(wildcards):
    return dataset_config(wildcards).get("wsol") or {"experiments": []}


def wsol_experiments(wildcards):
    return wsol_settings(wildcards).get("experiments", [])


def weight_maps(wildcards):
    return dataset_config(wildcards).get("weight_maps") or {}


WSOL_PARTS = {"wsol_calibration": "calibration_split", "wsol_evaluation": "evaluation_split"}
WSOL_SEED_NAMES = sorted({e["maps"] for c in DATASET_CONFIGS.values() for e in (c.get("wsol") or {}).get("experiments", [])
                          if e["maps"] in c["seeds"]})
WEIGHT_MAP_TRAINING_KEYS = ("backbone", "backbone_weights", "pretrained", "l1_weight", "epochs", "batch_size",
                            "lr", "weight_decay", "resize_long", "crop", "seed", "method", "margin",
                            "embedding_epochs", "embedding_lr")


def wsol_manifest(wildcards, split):
    """The WSOL images of a split (rule wsol_images)."""
    return f"results/{wildcards.dataset}/wsol_data/{split}.csv"


def wsol_part_manifest(wildcards):
    return wsol_manifest(wildcards, wsol_settings(wildcards)[WSOL_PARTS[wildcards.map_stage]])


def wsol_maps(wildcards, part):
    return f"results/{wildcards.dataset}/{part}/{wildcards.classifier}/{wildcards.entry}/maps.h5"


def wsol_seed_options(wildcards):
    return cli_options(dataset_config(wildcards)["seeds"][wildcards.entry])


def wsol_threshold(wildcards):
    """calibrate for seeds entries; a weight_maps entry's box_threshold (the paper's max/10)."""
    if wildcards.entry in weight_maps(wildcards):
        return str(weight_maps(wildcards)[wildcards.entry]["box_threshold"])
    return "calibrate"


def wsol_eval_inputs(wildcards):
    inputs = {"maps": wsol_maps(wildcards, "wsol_evaluation"),
              "manifest": wsol_manifest(wildcards, wsol_settings(wildcards)["evaluation_split"]),
              "classifier": f"results/{wildcards.dataset}/classifier/{wildcards.classifier}/model.pt"}
    if wsol_threshold(wildcards) == "calibrate":
        inputs.update(calibration_maps=wsol_maps(wildcards, "wsol_calibration"),
                      calibration_manifest=wsol_manifest(wildcards, wsol_settings(wildcards)["calibration_split"]))
    return inputs


def wsol_calibration_options(wildcards, input):
    if "calibration_maps" not in input.keys():
        return ""
    return (f"--calibration-maps {shlex.quote(input.calibration_maps)} "
            f"--calibration-manifest {shlex.quote(input.calibration_manifest)}")


def weight_map_options(wildcards):
    settings = weight_maps(wildcards)[wildcards.entry]
    return cli_options({key: settings[key] for key in WEIGHT_MAP_TRAINING_KEYS if key in settings})


def wsol_row_files(dataset):
    return [f"results/{dataset}/eval/wsol/{e['classifier']}/{e['maps']}/summary_rows.csv"
            for e in wsol_experiments(dataset)]


def has_segmentation(experiment):
    """Full supervision always; otherwise when asked for and pseudo masks exist to train on."""
    if experiment["seeds"] == FULL:
        return True
    return experiment.get("segmentation", True) and experiment.get("pseudo_masks", True)


def segmentation_experiments(dataset):
    return [e for e in experiments(dataset) if has_segmentation(e)]


def check_splits():
    """Before any job, in the main process: every split a user's dataset is read on exists (a
    generated dataset's splits are checked with the config)."""
    problems = [f"dataset {name}: {problem}" for name in DATASETS if name not in GENERATED_DATASETS
                for problem in missing_splits(DATASET_CONFIGS[name], dataset_adapter(name).split_ids)]
    if problems:
        raise invalid(problems)


if workflow.is_main_process:
    check_splits()


def check_masks():
    """Before any job, a user's dataset (a generated one has every mask): the seed split's images
    need their masks where anything scores them (`needs_seed_masks`: not a WSOL-only run, e.g. on
    CUB without segmentations/), the val split's where a segmentation network is evaluated. Checked
    here rather than by a prepare_data flag: a params flag would rebuild the manifest, and retrain
    everything, whenever experiments with and without those evaluations are swapped."""
    problems = []
    for name, settings in DATASETS.items():
        if name in GENERATED_DATASETS:
            continue
        needed = {}
        if needs_seed_masks(DATASET_CONFIGS[name]):
            needed[settings["train_split"]] = "seeds and pseudo masks are scored on that split (its masks are needed)"
        if segmentation_experiments(name):
            needed.setdefault(settings["val_split"], "the segmentation experiments are evaluated on that split "
                                                     "(give every val image its mask, or set segmentation: false)")
        dataset = dataset_adapter(name)
        for split, why in needed.items():
            missing = [i for i in dataset.split_ids(split) if dataset.mask_path(i) is None]
            if missing:
                problems.append(f"dataset {name}: {len(missing)} image(s) of split {split!r} have no ground-truth "
                                f"mask (e.g. {', '.join(repr(i) for i in missing[:5])}); {why}")
    if problems:
        raise invalid(problems)


if workflow.is_main_process:
    check_masks()


def check_ground_truth_subsets():
    """Before any job: a semi-supervised experiment's ground-truth images are images of the train
    split with a mask (a generated dataset's ids follow from its generator settings, every image
    with its mask)."""
    problems = []
    for name, settings in DATASETS.items():
        subsets = {masks: subset for masks, (_, subset) in semi_supervised(name).items()}
        if not subsets:
            continue
        split = settings["train_split"]
        if name in GENERATED_DATASETS:
            ids, has_mask = generated_split_ids(settings, split), lambda image_id: True
        else:
            dataset = dataset_adapter(name)
            ids, has_mask = dataset.split_ids(split), lambda image_id, d=dataset: d.mask_path(image_id) is not None
        problems += ground_truth_subset_problems(name, split, ids, has_mask, subsets)
    if problems:
        raise invalid(problems)


check_ground_truth_subsets()


def experiment_stages(dataset, experiment):
    """The evaluated stages of an experiment, in pipeline order. A semi-supervised experiment has
    its segmentation stages only: its seeds and pseudo masks are those of the weakly supervised
    experiment with the same classifier and seeds."""
    stages = []
    if experiment["seeds"] != FULL and not ground_truth_subset(experiment):
        settings = DATASET_CONFIGS[dataset]
        stages += ["seeds", "seeds_crf"] if settings["evaluation"]["seeds"]["crf"] else ["seeds"]
        if experiment.get("pseudo_masks", True):
            stages += ["pseudo_masks", "pseudo_masks_crf"] if settings["pseudo_masks"]["crf"] else ["pseudo_masks"]
    if has_segmentation(experiment):
        crf = DATASET_CONFIGS[dataset]["segmentation"]["crf"]
        stages += ["segmentation", "segmentation_crf"] if crf else ["segmentation"]
    return stages


def summary_row_files():
    rows = []
    for dataset in DATASETS:
        rows += saliency_row_files(dataset)
        rows += [
            f"results/{dataset}/classifier/{name}/summary_rows.csv"
            for name in sorted({e["classifier"] for e in [*experiments(dataset), *wsol_experiments(dataset)]})
        ]
        rows += wsol_row_files(dataset)
        for experiment in experiments(dataset):
            for stage in experiment_stages(dataset, experiment):
                name = segmentation_name(experiment) if stage in SEGMENTATION_STAGES else experiment["seeds"]
                rows.append(f"results/{dataset}/eval/{stage}/{experiment['classifier']}/{name}/summary_rows.csv")
    return list(dict.fromkeys(rows))


# Evaluations (rules/evaluation.smk)

# The swept stages (the seed split; a background-threshold sweep, curve.csv) and the maps each scores.
SWEEP_MAPS = {
    "seeds": "seeds/{classifier}/{seeds}/maps.h5",
    "seeds_crf": "seeds/{classifier}/{seeds}/maps.h5",
    "pseudo_masks": "random_walk/{classifier}/{seeds}/maps.h5",
    "pseudo_masks_crf": "pseudo_masks/{classifier}/{seeds}/masks.h5",
}


def sweep_maps(wildcards):
    path = SWEEP_MAPS[wildcards.sweep_stage].format(classifier=wildcards.classifier, seeds=wildcards.seeds)
    return f"results/{wildcards.dataset}/{path}"


def pseudo_mask_settings(wildcards):
    """The pseudo_masks section as its rule's command uses it (a param: changed, it reruns): without
    dCRF, crf_iterations and crf_gt_prob are unused, and a change of them reruns nothing. With dCRF
    (the default) it is the whole section, as the rule's params were before."""
    settings = dataset_config(wildcards)["pseudo_masks"]
    return settings if settings["crf"] else {"crf": False}


def pseudo_mask_threshold(wildcards):
    return seeds_stage_settings("random_walk", wildcards)["sem_seg_bg_thres"]


def sweep_options(wildcards):
    """A swept stage's --map-name and --thresholds (start stop step), and dCRF options.

    The rule's params hold exactly this (not the whole evaluation section), so a setting reruns
    only the sweeps whose command uses it: evaluation.seeds.thresholds the `seeds` sweeps,
    crf_thresholds the `seeds_crf` ones, neither the scoring of seeds with a saliency background
    (no sweep). crf_workers is not here: the scores do not depend on it (the rule passes its
    threads, sweep_threads, as --workers).
    """
    stage = wildcards.sweep_stage
    evaluation = dataset_config(wildcards)["evaluation"]
    if wildcards.seeds in derived_seeds(wildcards) and stage in ("seeds", "seeds_crf"):
        # P-NOC's scoring of saliency: 1 − saliency is each pixel's background score, no sweep.
        return "--map-name cam --saliency-background" + (" --crf" if stage == "seeds_crf" else "")
    if stage == "seeds":
        return f"--map-name cam --thresholds {cli_value(evaluation['seeds']['thresholds'])}"
    if stage == "seeds_crf":
        return f"--map-name cam --thresholds {cli_value(evaluation['seeds']['crf_thresholds'])} --crf"
    if stage == "pseudo_masks":
        # The random walk's normalised scores, swept over sem_seg_bg_thres (best recorded).
        return f"--map-name cam --thresholds {cli_value(evaluation['pseudo_masks']['thresholds'])}"
    # pseudo_masks_crf: the dCRF-refined masks at the walk's sem_seg_bg_thres. Their one-hot form
    # scored at that single threshold reproduces the masks exactly.
    threshold = cli_value(pseudo_mask_threshold(wildcards))
    return f"--map-name mask_onehot --thresholds {threshold} {threshold} 1"


def sweep_threads(wildcards):
    """The dCRF sweep's worker processes (crf_workers); the other scorings, and the dCRF of seeds
    with a saliency background (one label map an image), run in one."""
    if wildcards.sweep_stage == "seeds_crf" and wildcards.seeds not in derived_seeds(wildcards):
        return dataset_config(wildcards)["evaluation"]["seeds"]["crf_workers"]
    return 1


# Segmentation (rules/segmentation.smk)

SEGMENTATION_STAGES = ("segmentation", "segmentation_crf")

SEGMENTATION_INFERENCE_KEYS = ("test_scales", "flip", "crf")


def segmentation_settings(wildcards):
    return dataset_config(wildcards)["segmentation"]


def segmentation_training(wildcards):
    """What shapes the trained segmentation network (a param: changed, it retrains)."""
    return {k: v for k, v in segmentation_settings(wildcards).items()
            if k not in (*SEGMENTATION_INFERENCE_KEYS, "init_from_classifier", "checkpoint_every")}


def segmentation_inference(wildcards):
    return {k: segmentation_settings(wildcards)[k] for k in SEGMENTATION_INFERENCE_KEYS}


def segmentation_inference_options(wildcards):
    settings = segmentation_settings(wildcards)
    return cli_options({"scales": settings["test_scales"], "flip": settings["flip"], "crf": settings["crf"]})


def segmentation_train_inputs(wildcards):
    inputs = {}
    if segmentation_settings(wildcards)["init_from_classifier"]:
        inputs["classifier"] = f"results/{wildcards.dataset}/classifier/{wildcards.classifier}/model.pt"
    if wildcards.masks != FULL:
        inputs["masks"] = (
            f"results/{wildcards.dataset}/pseudo_masks/{wildcards.classifier}/{masks_seeds(wildcards)}/masks.h5"
        )
    if wildcards.masks in semi_supervised(wildcards):
        inputs["ground_truth_subset"] = semi_supervised(wildcards)[wildcards.masks][1]
    return inputs


def segmentation_sources(wildcards, input):
    init = f"--init-classifier {shlex.quote(input.classifier)}" if "classifier" in input.keys() else ""
    masks = "--ground-truth" if wildcards.masks == FULL else f"--masks {shlex.quote(input.masks)}"
    if "ground_truth_subset" in input.keys():
        masks += f" --ground-truth-subset {shlex.quote(input.ground_truth_subset)}"
    return f"{masks} {init}"


# Report (rules/report.smk)

def named_experiment(wildcards):
    """The experiment of a report's {classifier} and {masks} (its segmentation name)."""
    return next(e for e in experiments(wildcards.dataset) if e["classifier"] == wildcards.classifier
                and segmentation_name(e) == wildcards.masks)


def sweep_curves(wildcards):
    """The swept stages of an experiment (seeds, +CRF, pseudo masks) and their curve files."""
    experiment = named_experiment(wildcards)
    swept = [s for s in experiment_stages(wildcards.dataset, experiment) if s in ("seeds", "seeds_crf", "pseudo_masks")]
    return {
        stage: f"results/{wildcards.dataset}/eval/{stage}/{wildcards.classifier}/{wildcards.masks}/curve.csv"
        for stage in swept
    }


def per_class_tables(wildcards):
    experiment = named_experiment(wildcards)
    return {
        stage: f"results/{wildcards.dataset}/eval/{stage}/{wildcards.classifier}/{wildcards.masks}/per_class.csv"
        for stage in experiment_stages(wildcards.dataset, experiment)
    }


def gallery_inputs(wildcards):
    base = f"results/{wildcards.dataset}"
    inputs = {
        "manifest": seed_manifest(wildcards),
        "predictions": f"{base}/segmentation/{wildcards.classifier}/{wildcards.masks}/gallery.h5",
    }
    if wildcards.masks != FULL:
        seeds = masks_seeds(wildcards)
        inputs["seeds"] = f"{base}/seeds/{wildcards.classifier}/{seeds}/maps.h5"
        inputs["seeds_rows"] = f"{base}/eval/seeds/{wildcards.classifier}/{seeds}/summary_rows.csv"
        inputs["pseudo_masks"] = f"{base}/pseudo_masks/{wildcards.classifier}/{seeds}/masks.h5"
    return inputs


def pairs(mapping):
    return " ".join(shlex.quote(f"{name}={path}") for name, path in mapping.items())


def seed_experiments(dataset):
    """The experiments with seeds (every one but full supervision), in config order, each
    seeds entry once (a semi-supervised experiment shares its weakly supervised one's)."""
    unique = {(e["classifier"], e["seeds"]): e for e in experiments(dataset) if e["seeds"] != FULL}
    return list(unique.values())


def seeds_curves(wildcards):
    """Every seed method's threshold sweep of a dataset, named classifier/seeds (report_seeds_precision_recall)."""
    return {
        f"{e['classifier']}/{e['seeds']}": f"results/{wildcards.dataset}/eval/seeds/{e['classifier']}/{e['seeds']}/curve.csv"
        for e in seed_experiments(wildcards.dataset)
    }


def report_files():
    files = []
    for dataset in DATASETS:
        files.append(f"results/{dataset}/report/stages.html")
        if seed_experiments(dataset):
            files.append(f"results/{dataset}/report/seeds_precision_recall.png")
        for experiment in segmentation_experiments(dataset):
            name = segmentation_name(experiment)
            folder = f"results/{dataset}/report/{experiment['classifier']}/{name}"
            files += [f"{folder}/per_class.png", f"{folder}/gallery.png"]
            if experiment["seeds"] != FULL and not ground_truth_subset(experiment):
                files.append(f"{folder}/sweep.png")
            png = f"results/{dataset}/segmentation/{experiment['classifier']}/{name}"
            files += [f"{png}/png", f"{png}/png_crf"] if segmentation_settings(dataset)["crf"] else [f"{png}/png"]
        if wsol_experiments(dataset):
            files.append(f"results/{dataset}/report/wsol_boxes.png")
    return files


def wsol_box_files(wildcards):
    """Every WSOL experiment's boxes and evaluation maps, named classifier/maps (report_wsol_boxes)."""
    files = {"manifest": wsol_manifest(wildcards, wsol_settings(wildcards)["evaluation_split"])}
    for e in wsol_experiments(wildcards):
        name = f"{e['classifier']}/{e['maps']}"
        files[f"boxes {name}"] = f"results/{wildcards.dataset}/eval/wsol/{name}/boxes.csv"
        files[f"maps {name}"] = f"results/{wildcards.dataset}/wsol_evaluation/{name}/maps.h5"
    return files
