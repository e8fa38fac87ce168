"""What a run computes, from its validated configs: the experiments' stages, the entry names its
wildcards take, and the files the summary (results/summary.csv) and the report are made of.

``configs`` is the run's dataset name → config (startup.load_run_configs), ``config`` one
dataset's config.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from wsss_steps.workflow.config import (
    FULL_SUPERVISION,
    SALIENCY_BACKGROUND,
    ground_truth_subset,
    segmentation_name,
)

Config = Mapping[str, Any]

SEGMENTATION_STAGES = ("segmentation", "segmentation_crf")
NEVER = "(?!)"  # a regular expression nothing matches


def alternatives(names: Iterable[str]) -> str:
    """A wildcard's constraint: exactly one of ``names`` (none: nothing matches)."""
    return "|".join(re.escape(name) for name in names) or NEVER


def experiments(config: Config) -> list[Mapping[str, Any]]:
    return config["experiments"]


def entry_names(configs: Mapping[str, Config], section: str) -> list[str]:
    """Every dataset's entries of a config section, in config order, once each (the wildcards'
    values)."""
    return list(dict.fromkeys(name for config in configs.values() for name in config.get(section) or {}))


def saliency_entries(config: Config) -> Mapping[str, Any]:
    return config.get("saliency") or {}


def saliency_background_seeds(config: Config) -> dict[str, Any]:
    """Seeds entries that take another entry's maps with a saliency background (rule
    saliency_seeds); the others are computed from a classifier (rule seeds_shard). A name means
    the same kind of entry in every dataset of the run (config.check_dataset_configs)."""
    return {name: s for name, s in config["seeds"].items() if s["method"] == SALIENCY_BACKGROUND}


def saliency_background_seed_names(configs: Mapping[str, Config]) -> list[str]:
    return [name for config in configs.values() for name in saliency_background_seeds(config)]


def computed_seed_names(configs: Mapping[str, Config]) -> list[str]:
    """Seeds entries computed from a classifier (rule seeds_shard), in every dataset of the run."""
    background = saliency_background_seed_names(configs)
    return [name for name in entry_names(configs, "seeds") if name not in background]


def semi_supervised(config: Config) -> dict[str, tuple[str, str]]:
    """A dataset's semi-supervised segmentation networks by name: their seeds and subset file."""
    return {segmentation_name(e): (e["seeds"], subset) for e in experiments(config)
            if (subset := ground_truth_subset(e))}


def semi_supervised_names(configs: Mapping[str, Config]) -> list[str]:
    return list(dict.fromkeys(name for config in configs.values() for name in semi_supervised(config)))


def wsol_settings(config: Config) -> Mapping[str, Any]:
    return config.get("wsol") or {"experiments": []}


def wsol_experiments(config: Config) -> list[Mapping[str, Any]]:
    return wsol_settings(config).get("experiments", [])


def wsol_seed_names(configs: Mapping[str, Config]) -> list[str]:
    """The seeds entries (cam, advcam) WSOL experiments compute on their images, sorted."""
    return sorted({e["maps"] for config in configs.values() for e in wsol_experiments(config)
                   if e["maps"] in config["seeds"]})


def has_segmentation(experiment: Mapping[str, Any]) -> bool:
    """Full supervision always; otherwise when asked for and pseudo masks exist to train on."""
    if experiment["seeds"] == FULL_SUPERVISION:
        return True
    return bool(experiment.get("segmentation", True) and experiment.get("pseudo_masks", True))


def segmentation_experiments(config: Config) -> list[Mapping[str, Any]]:
    return [e for e in experiments(config) if has_segmentation(e)]


def weakly_supervised(experiment: Mapping[str, Any]) -> bool:
    """An experiment with its own seeds (and pseudo masks): not full supervision, and not a
    semi-supervised one (it shares the weakly supervised experiment's)."""
    return experiment["seeds"] != FULL_SUPERVISION and not ground_truth_subset(experiment)


def experiment_stages(config: Config, experiment: Mapping[str, Any]) -> list[str]:
    """The evaluated stages of an experiment, in pipeline order. A semi-supervised experiment has
    its segmentation stages only: its seeds and pseudo masks are those of the weakly supervised
    experiment with the same classifier and seeds."""
    stages = []
    if weakly_supervised(experiment):
        stages += ["seeds", "seeds_crf"] if config["evaluation"]["seeds"]["crf"] else ["seeds"]
        if experiment.get("pseudo_masks", True):
            stages += ["pseudo_masks", "pseudo_masks_crf"] if config["pseudo_masks"]["crf"] else ["pseudo_masks"]
    if has_segmentation(experiment):
        stages += list(SEGMENTATION_STAGES) if config["segmentation"]["crf"] else ["segmentation"]
    return stages


def seed_experiments(config: Config) -> list[Mapping[str, Any]]:
    """The experiments with seeds (every one but full supervision), in config order, each
    seeds entry once (a semi-supervised experiment shares its weakly supervised one's)."""
    unique = {(e["classifier"], e["seeds"]): e for e in experiments(config) if e["seeds"] != FULL_SUPERVISION}
    return list(unique.values())


def hint_seeds(config: Config) -> list[tuple[str, str]]:
    """(classifier, seeds) of every C²AM-H entry's hints, once each: their own foreground is scored
    beside the saliency it taught."""
    return sorted({(s["classifier"], s["seeds"]) for s in saliency_entries(config).values() if s["method"] == "c2am_h"})


def saliency_row_files(dataset: str, config: Config) -> list[str]:
    rows = [f"results/{dataset}/eval/saliency/{name}/summary_rows.csv" for name in saliency_entries(config)]
    rows += [f"results/{dataset}/eval/saliency_hints/{c}/{s}/summary_rows.csv" for c, s in hint_seeds(config)]
    return rows


def wsol_row_files(dataset: str, config: Config) -> list[str]:
    return [f"results/{dataset}/eval/wsol/{e['classifier']}/{e['maps']}/summary_rows.csv"
            for e in wsol_experiments(config)]


def evaluation_shards(config: Config) -> int:
    """How many shard jobs each of a dataset's swept evaluations runs as (1: one job, no merge)."""
    return config["evaluation"]["shards"]


def sharded_evaluation_datasets(configs: Mapping[str, Config], sharded: bool) -> list[str]:
    """The datasets whose swept evaluations are sharded (``sharded``) or not: the first are
    scored by shard jobs and a merge, the others by one job each (a rule's {dataset} constraint,
    so that exactly one rule makes a sweep's outputs)."""
    return [name for name, config in configs.items() if (evaluation_shards(config) > 1) == sharded]


def sweep_shard_files(dataset: str, config: Config, stage: str, classifier: str, seeds: str) -> list[str]:
    """The shard files of one swept evaluation, in shard order (the merge's input)."""
    n = evaluation_shards(config)
    return [f"results/{dataset}/eval/{stage}/{classifier}/{seeds}/shards/shard-{k}-of-{n}.npz" for k in range(n)]


def pseudo_mask_shards(config: Config) -> int:
    """How many shard jobs each of a dataset's pseudo masks are computed in (1: one job, no merge)."""
    return config["pseudo_masks"]["shards"]


def sharded_pseudo_mask_datasets(configs: Mapping[str, Config], sharded: bool) -> list[str]:
    """The datasets whose pseudo masks are sharded (``sharded``) or not: the first are made by
    shard jobs and a merge, the others by one job each (a rule's {dataset} constraint, so that
    exactly one rule makes an experiment's masks.h5 and png/)."""
    return [name for name, config in configs.items() if (pseudo_mask_shards(config) > 1) == sharded]


def pseudo_mask_shard_files(dataset: str, config: Config, classifier: str, seeds: str) -> list[str]:
    """The shard files of one experiment's pseudo masks, in shard order (the merge's input)."""
    n = pseudo_mask_shards(config)
    return [f"results/{dataset}/pseudo_masks/{classifier}/{seeds}/shards/shard-{k}-of-{n}.h5" for k in range(n)]


def summary_row_files(configs: Mapping[str, Config]) -> list[str]:
    """The summary's rows, once each: per dataset its saliency entries, classifiers, WSOL
    experiments and every evaluated stage of every experiment."""
    rows = []
    for dataset, config in configs.items():
        rows += saliency_row_files(dataset, config)
        rows += [f"results/{dataset}/classifier/{name}/summary_rows.csv"
                 for name in sorted({e["classifier"] for e in [*experiments(config), *wsol_experiments(config)]})]
        rows += wsol_row_files(dataset, config)
        for experiment in experiments(config):
            for stage in experiment_stages(config, experiment):
                name = segmentation_name(experiment) if stage in SEGMENTATION_STAGES else experiment["seeds"]
                rows.append(f"results/{dataset}/eval/{stage}/{experiment['classifier']}/{name}/summary_rows.csv")
    return list(dict.fromkeys(rows))


def report_files(configs: Mapping[str, Config]) -> list[str]:
    """The report's figures and tables, and the segmentation networks' PNG folders."""
    files = []
    for dataset, config in configs.items():
        files.append(f"results/{dataset}/report/stages.html")
        if seed_experiments(config):
            files.append(f"results/{dataset}/report/seeds_precision_recall.png")
        for experiment in segmentation_experiments(config):
            name = segmentation_name(experiment)
            folder = f"results/{dataset}/report/{experiment['classifier']}/{name}"
            files += [f"{folder}/per_class.png", f"{folder}/gallery.png"]
            if weakly_supervised(experiment):
                files.append(f"{folder}/sweep.png")
            png = f"results/{dataset}/segmentation/{experiment['classifier']}/{name}"
            files += [f"{png}/png", f"{png}/png_crf"] if config["segmentation"]["crf"] else [f"{png}/png"]
        if wsol_experiments(config):
            files.append(f"results/{dataset}/report/wsol_boxes.png")
    return files


# The report's inputs (rules/report.smk, report_wsol_boxes in rules/wsol.smk): files by the name
# the figure gives them.
SWEPT_STAGES = ("seeds", "seeds_crf", "pseudo_masks")  # a threshold sweep's curve each (report_sweep)


def named_experiment(config: Config, classifier: str, network: str) -> Mapping[str, Any]:
    """The experiment of a classifier and a segmentation network's name (the report's {masks})."""
    return next(e for e in experiments(config) if e["classifier"] == classifier and segmentation_name(e) == network)


def experiment_files(dataset: str, config: Config, classifier: str, network: str, name: str,
                     stages: Collection[str] | None = None) -> dict[str, str]:
    """An experiment's evaluation file ``name`` (curve.csv, per_class.csv) of each stage it is
    evaluated at (of ``stages`` among them), by stage."""
    evaluated = experiment_stages(config, named_experiment(config, classifier, network))
    return {stage: f"results/{dataset}/eval/{stage}/{classifier}/{network}/{name}"
            for stage in evaluated if stages is None or stage in stages}


def seeds_curves(dataset: str, config: Config) -> dict[str, str]:
    """Every seed method's threshold sweep of a dataset, named classifier/seeds."""
    return {f"{e['classifier']}/{e['seeds']}": f"results/{dataset}/eval/seeds/{e['classifier']}/{e['seeds']}/curve.csv"
            for e in seed_experiments(config)}


def gallery_inputs(dataset: str, config: Config, classifier: str, network: str) -> dict[str, str]:
    """The gallery's images (the seed split's manifest), the network's predictions on them, and
    but for full supervision the seeds (their scores) and pseudo masks it was trained on."""
    base = f"results/{dataset}"
    inputs = {"manifest": f"{base}/data/{config['dataset']['train_split']}.csv",
              "predictions": f"{base}/segmentation/{classifier}/{network}/gallery.h5"}
    if network != FULL_SUPERVISION:
        seeds = semi_supervised(config)[network][0] if network in semi_supervised(config) else network
        inputs["seeds"] = f"{base}/seeds/{classifier}/{seeds}/maps.h5"
        inputs["seeds_rows"] = f"{base}/eval/seeds/{classifier}/{seeds}/summary_rows.csv"
        inputs["pseudo_masks"] = f"{base}/pseudo_masks/{classifier}/{seeds}/masks.h5"
    return inputs


def wsol_box_files(dataset: str, config: Config) -> dict[str, str]:
    """The evaluation split's WSOL images, and every WSOL experiment's boxes and evaluation maps,
    named `boxes classifier/maps` and `maps classifier/maps`."""
    files = {"manifest": f"results/{dataset}/wsol_data/{wsol_settings(config)['evaluation_split']}.csv"}
    for e in wsol_experiments(config):
        name = f"{e['classifier']}/{e['maps']}"
        files[f"boxes {name}"] = f"results/{dataset}/eval/wsol/{name}/boxes.csv"
        files[f"maps {name}"] = f"results/{dataset}/wsol_evaluation/{name}/maps.h5"
    return files
