"""The input files of the rules' jobs: where each artifact lives under results/ and which of them a
job reads, as functions of a dataset's validated config and the job's wildcards.

``config`` is one dataset's config (startup.load_run_configs), ``w`` a job's wildcards (any object
with the wildcards as attributes: Snakemake's, or a namespace in the tests). rules/common.smk
turns each into an input function of the job's wildcards (``common.smk: with_config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wsss_steps.workflow import targets
from wsss_steps.workflow.config import FULL_SUPERVISION
from wsss_steps.workflow.config import semi_supervised_method as method_of_experiment
from wsss_steps.workflow.options import wsol_threshold as threshold_of_entry

Config = Mapping[str, Any]
Wildcards = Any

# The WSOL maps' two parts (rules/wsol.smk): the box threshold is calibrated on the first split's
# WSOL images and applied to the second's.
WSOL_PARTS = {"wsol_calibration": "calibration_split", "wsol_evaluation": "evaluation_split"}

# The swept stages (evaluated on the seed split with a background-threshold sweep, curve.csv) and
# the maps each scores.
SWEEP_MAPS = {
    "seeds": "seeds/{classifier}/{seeds}/maps.h5",
    "seeds_crf": "seeds/{classifier}/{seeds}/maps.h5",
    "pseudo_masks": "random_walk/{classifier}/{seeds}/maps.h5",
    "pseudo_masks_crf": "pseudo_masks/{classifier}/{seeds}/masks.h5",
}


# Splits and manifests (rules/data.smk).


def train_split(config: Config) -> str:
    """The split the classifier and the segmentation network train on."""
    return config["dataset"]["train_split"]


def val_split(config: Config) -> str:
    return config["dataset"]["val_split"]


def seed_split(config: Config) -> str:
    """The split seeds, affinity labels, random walk and pseudo masks are computed and evaluated on."""
    return train_split(config)


def manifest(dataset: str, split: str) -> str:
    return f"results/{dataset}/data/{split}.csv"


def train_manifest(config: Config, w: Wildcards) -> str:
    return manifest(w.dataset, train_split(config))


def val_manifest(config: Config, w: Wildcards) -> str:
    return manifest(w.dataset, val_split(config))


def seed_manifest(config: Config, w: Wildcards) -> str:
    return manifest(w.dataset, seed_split(config))


def wsol_manifest(dataset: str, split: str) -> str:
    """The WSOL images of a split (rule wsol_images)."""
    return f"results/{dataset}/wsol_data/{split}.csv"


def classifier_model(dataset: str, classifier: str) -> str:
    return f"results/{dataset}/classifier/{classifier}/model.pt"


def saliency_maps_file(dataset: str, entry: str) -> str:
    return f"results/{dataset}/saliency/{entry}/maps.h5"


# Map stages (rules/maps.smk): inferred in shards, each over one split, then merged by merge_maps.
# Segmentation predicts the val split; the other stages cover the seed split; the WSOL parts their
# WSOL images.
MAP_STAGE_SPLITS = {"seeds": seed_split, "affinity_labels": seed_split, "random_walk": seed_split,
                    "segmentation": val_split}


def map_stage_manifest(config: Config, w: Wildcards) -> str:
    if w.map_stage in WSOL_PARTS:
        return wsol_manifest(w.dataset, targets.wsol_settings(config)[WSOL_PARTS[w.map_stage]])
    return manifest(w.dataset, MAP_STAGE_SPLITS[w.map_stage](config))


def shard_files(w: Wildcards, shards: int) -> list[str]:
    """The shard files of one stage's maps, in shard order (merge_maps' input)."""
    return [f"results/{w.dataset}/{w.map_stage}/{w.classifier}/{w.entry}/shards/shard-{shard}-of-{shards}.h5"
            for shard in range(shards)]


def saliency_shard_files(w: Wildcards, shards: int) -> list[str]:
    return [f"results/{w.dataset}/saliency/{w.saliency}/shards/shard-{shard}-of-{shards}.h5"
            for shard in range(shards)]


# What the networks read.


def classifier_inputs(config: Config, w: Wildcards) -> dict[str, str]:
    """The training and validation manifests (a softmax classifier's: the WSOL images of the train
    and val splits), and the ordinary classifier's model where the variant reads one (OC-CSE, P-OC,
    P-NOC): another entry's artifact, trained once."""
    settings = config["classifiers"][w.classifier]
    as_manifest = wsol_manifest if settings.get("loss") == "softmax" else manifest
    inputs = {"train": as_manifest(w.dataset, train_split(config)), "val": as_manifest(w.dataset, val_split(config))}
    if settings.get("ordinary"):
        inputs["ordinary"] = classifier_model(w.dataset, settings["ordinary"])
    return inputs


def seed_inputs(config: Config, w: Wildcards) -> dict[str, str]:
    """AdvCAM-Sal reads its saliency entry's maps."""
    saliency = config["seeds"][w.seeds].get("saliency")
    return {"saliency": saliency_maps_file(w.dataset, saliency)} if saliency else {}


def saliency_background_inputs(config: Config, w: Wildcards) -> dict[str, str]:
    """Seeds with a saliency background: the seeds entry they take and the saliency entry's maps."""
    settings = targets.saliency_background_seeds(config)[w.seeds]
    return {"seeds": f"results/{w.dataset}/seeds/{w.classifier}/{settings['seeds']}/maps.h5",
            "saliency": saliency_maps_file(w.dataset, settings["saliency"])}


def saliency_train_inputs(config: Config, w: Wildcards) -> dict[str, str]:
    """C²AM-H reads its hint seeds, the refinement network its source entry's maps."""
    settings = targets.saliency_entries(config)[w.saliency]
    inputs = {"manifest": manifest(w.dataset, seed_split(config))}
    if settings["method"] == "c2am_h":
        inputs["hints"] = f"results/{w.dataset}/seeds/{settings['classifier']}/{settings['seeds']}/maps.h5"
    if settings["method"] == "refined":
        inputs["masks"] = saliency_maps_file(w.dataset, settings["source"])
    return inputs


def masks_seeds(config: Config, w: Wildcards) -> str:
    """The seeds entry whose pseudo masks a segmentation network ({masks}) trains on (`full`: none)."""
    semi = targets.semi_supervised(config)
    return semi[w.masks][0] if w.masks in semi else w.masks


def semi_supervised_method(config: Config, w: Wildcards) -> dict[str, Any]:
    """The segmentation network's semi-supervised method (`mix` where it is none: weakly or fully
    supervised); CCT without weak labels reads no pseudo masks."""
    if w.masks not in targets.semi_supervised(config):
        return {"method": "mix"}
    return method_of_experiment(targets.named_experiment(config, w.classifier, w.masks))


def segmentation_train_inputs(config: Config, w: Wildcards) -> dict[str, str]:
    inputs = {}
    if config["segmentation"]["init_from_classifier"]:
        inputs["classifier"] = classifier_model(w.dataset, w.classifier)
    if w.masks != FULL_SUPERVISION and semi_supervised_method(config, w).get("weak_labels", True):
        inputs["masks"] = f"results/{w.dataset}/pseudo_masks/{w.classifier}/{masks_seeds(config, w)}/masks.h5"
    semi = targets.semi_supervised(config)
    if w.masks in semi:
        inputs["ground_truth_subset"] = semi[w.masks][1]
    return inputs


# WSOL (rules/wsol.smk): maps of two parts from seeds entries (cam, advcam) or weight_maps entries.


def weight_maps(config: Config) -> Mapping[str, Any]:
    return config.get("weight_maps") or {}


def wsol_threshold(config: Config, w: Wildcards) -> str:
    """`calibrate` for seeds entries; a weight_maps entry's box_threshold (the paper's max/10)."""
    return threshold_of_entry(w.entry, weight_maps(config))


def wsol_maps(w: Wildcards, part: str) -> str:
    return f"results/{w.dataset}/{part}/{w.classifier}/{w.entry}/maps.h5"


def wsol_eval_inputs(config: Config, w: Wildcards) -> dict[str, str]:
    settings = targets.wsol_settings(config)
    inputs = {"maps": wsol_maps(w, "wsol_evaluation"),
              "manifest": wsol_manifest(w.dataset, settings["evaluation_split"]),
              "classifier": classifier_model(w.dataset, w.classifier)}
    if wsol_threshold(config, w) == "calibrate":
        inputs.update(calibration_maps=wsol_maps(w, "wsol_calibration"),
                      calibration_manifest=wsol_manifest(w.dataset, settings["calibration_split"]))
    return inputs


def sweep_maps(config: Config, w: Wildcards) -> str:
    """The maps a swept stage ({sweep_stage}) scores."""
    return f"results/{w.dataset}/" + SWEEP_MAPS[w.sweep_stage].format(classifier=w.classifier, seeds=w.seeds)
