"""The steps' command-line options, built from config sections (the rules' params and shell lines).

A rule's params hold exactly the settings its command uses: Snakemake reruns a job whose params
changed (rerun trigger `params`), so a setting that a command does not read must not be in its
params, and a section's key order must not matter (startup.sorted_mapping sorts the keys). Every
value is shell-quoted here: the shell lines insert these strings as they are.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Collection, Mapping
from typing import Any

SALIENCY_INFERENCE_KEYS = ("scales", "flip", "mask_threshold", "crf", "crf_iterations", "crf_gt_prob")
SALIENCY_REFERENCE_KEYS = ("method", "classifier", "seeds", "source")  # entries it reads, not options
SEGMENTATION_INFERENCE_KEYS = ("test_scales", "flip", "crf")
WEIGHT_MAP_TRAINING_KEYS = ("backbone", "backbone_weights", "pretrained", "l1_weight", "epochs", "batch_size",
                            "lr", "weight_decay", "resize_long", "crop", "seed", "method", "margin",
                            "embedding_epochs", "embedding_lr")
SWEPT_SEED_STAGES = ("seeds", "seeds_crf")


def cli_value(value: Any) -> str:
    """A value as shell words: a list or tuple as one quoted word per item, anything else as one."""
    if isinstance(value, (list, tuple)):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def cli_options(settings: Mapping[str, Any], skip: Collection[str] = ()) -> str:
    """A config section as `--key value` options in its key order (`_` → `-`): booleans as `--key`
    / `--no-key`, None left out (the step's default), lists as several values."""
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


def path_option(name: str, path: str | None) -> str:
    """`--name PATH` (quoted), or nothing where there is no such file."""
    return "" if path is None else f"--{name} {shlex.quote(str(path))}"


def pairs(mapping: Mapping[str, str]) -> str:
    """`name=path` words (the report figures' --curve, --per-class, --boxes, --maps)."""
    return " ".join(shlex.quote(f"{name}={path}") for name, path in mapping.items())


def training_params(folder: str, device: str,
                    settings: Callable[[Any], Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The params behind the training rules' shared arguments, `--checkpoint-dir
    {params.checkpoints:q} [--checkpoint-every {params.checkpoint_every}] ... --device
    {params.device} --threads {threads}`: the checkpoint folder in the stage's ``folder`` (a
    pattern), the section's checkpoint_every where ``settings`` (wildcards → section) gives one,
    and the run's device. The shell lines keep their own text: Snakemake reruns a rule's jobs when
    that text changes (rerun trigger `code`)."""
    params: dict[str, Any] = {"checkpoints": f"{folder}/checkpoints", "device": device}
    if settings is not None:
        params["checkpoint_every"] = lambda wildcards: settings(wildcards)["checkpoint_every"]
    return params


def seeds_stage_settings(section: Mapping[str, Any], seeds: str) -> dict[str, Any]:
    """A config section as it applies to one seeds entry: `<section>.per_seeds.<seeds>` over the
    rest, keys sorted. Rule params hold exactly this, so an override reruns that entry's stages
    only, and an override equal to the shared value reruns nothing."""
    settings = {key: value for key, value in section.items() if key != "per_seeds"}
    settings.update(section["per_seeds"].get(seeds, {}))
    return dict(sorted(settings.items()))


def affinity_settings(section: Mapping[str, Any], seeds: str, saliency_background: bool) -> dict[str, Any]:
    """The affinity section for one seeds entry: IRN's two thresholds (conf_fg, conf_bg), or for
    seeds with a saliency background P-NOC's saliency-aware rule (its thresholds only)."""
    settings = seeds_stage_settings(section, seeds)
    unused = ("conf_fg", "conf_bg") if saliency_background else ("sal_bg_threshold", "sal_fg_threshold")
    return {k: v for k, v in settings.items() if k not in unused}


def seed_options(settings: Mapping[str, Any], saliency: str | None = None) -> str:
    """A seeds entry's options; AdvCAM-Sal reads its saliency entry's maps (``saliency``)."""
    options = cli_options(settings, skip=("saliency",))
    if saliency is not None:
        options += f" {path_option('saliency', saliency)}"
    return options


def saliency_background_map(settings: Mapping[str, Any], saliency_entries: Mapping[str, Any]) -> str:
    """Which map of the saliency entry is the background of seeds with a saliency background
    (`saliency_map`); by default P-NOC's: the dCRF-refined pseudo-saliency mask of C²AM and
    C²AM-H, the refinement network's map itself."""
    choice = settings.get("saliency_map") or "auto"
    if choice == "auto":
        choice = "map" if saliency_entries[settings["saliency"]]["method"] == "refined" else "mask"
    return "saliency" if choice == "map" else "saliency_mask"


def saliency_training(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What shapes a trained saliency network (a param: changed, it retrains)."""
    return {k: v for k, v in settings.items() if k not in (*SALIENCY_INFERENCE_KEYS, "checkpoint_every")}


def saliency_inference(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k in SALIENCY_INFERENCE_KEYS}


def saliency_train_options(settings: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """train_saliency's options: the method, its training settings, and the files it reads
    (C²AM-H's hint seeds, the refinement network's source masks)."""
    options = cli_options(saliency_training(settings), skip=SALIENCY_REFERENCE_KEYS)
    for name in ("hints", "masks"):
        if name in inputs:
            options += f" {path_option(name, inputs[name])}"
    return f"--method {settings['method']} {options}"


def weight_map_options(settings: Mapping[str, Any]) -> str:
    """train_weight_map's options: the entry's training keys (not box_threshold, read by the
    evaluation)."""
    return cli_options({key: settings[key] for key in WEIGHT_MAP_TRAINING_KEYS if key in settings})


def wsol_threshold(entry: str, weight_maps: Mapping[str, Any]) -> str:
    """`calibrate` for seeds entries; a weight_maps entry's box_threshold (the paper's max/10)."""
    if entry in weight_maps:
        return str(weight_maps[entry]["box_threshold"])
    return "calibrate"


def wsol_calibration_options(inputs: Mapping[str, str]) -> str:
    if "calibration_maps" not in inputs:
        return ""
    return f"{path_option('calibration-maps', inputs['calibration_maps'])} " \
           f"{path_option('calibration-manifest', inputs['calibration_manifest'])}"


def pseudo_mask_settings(settings: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pseudo_masks section as its rule's command uses it (a param: changed, it reruns): without
    dCRF, crf_iterations and crf_gt_prob are unused, and a change of them reruns nothing. With dCRF
    (the default) it is the whole section, as the rule's params were before. ``shards`` (how many
    jobs compute the masks, not what they are) is never in it."""
    if not settings["crf"]:
        return {"crf": False}
    return {key: value for key, value in settings.items() if key != "shards"}


def sweep_options(stage: str, evaluation: Mapping[str, Any], saliency_background: bool,
                  walk_threshold: float) -> str:
    """A swept stage's --map-name and --thresholds (start stop step), and dCRF options.

    The rule's params hold exactly this (not the whole evaluation section), so a setting reruns
    only the sweeps whose command uses it: evaluation.seeds.thresholds the `seeds` sweeps,
    crf_thresholds the `seeds_crf` ones, neither the scoring of seeds with a saliency background
    (no sweep). crf_workers is not here: the scores do not depend on it (the rule passes its
    threads, sweep_threads, as --workers). ``walk_threshold`` is the random walk's
    sem_seg_bg_thres for the entry (the pseudo_masks_crf stage).
    """
    if saliency_background and stage in SWEPT_SEED_STAGES:
        # P-NOC's scoring of saliency: 1 − saliency is each pixel's background score, no sweep.
        return "--map-name cam --saliency-background" + (" --crf" if stage == "seeds_crf" else "")
    if stage == "seeds":
        return f"--map-name cam --thresholds {cli_value(evaluation['seeds']['thresholds'])}"
    if stage == "seeds_crf":
        return f"--map-name cam --thresholds {cli_value(evaluation['seeds']['crf_thresholds'])} --crf"
    if stage == "pseudo_masks":
        # The random walk's normalised scores, swept over sem_seg_bg_thres (best recorded).
        return f"--map-name cam --thresholds {cli_value(evaluation['pseudo_masks']['thresholds'])}"
    if stage != "pseudo_masks_crf":
        raise ValueError(f"not a swept stage: {stage!r}")
    # pseudo_masks_crf: the dCRF-refined masks at the walk's sem_seg_bg_thres. Their one-hot form
    # scored at that single threshold reproduces the masks exactly.
    threshold = cli_value(walk_threshold)
    return f"--map-name mask_onehot --thresholds {threshold} {threshold} 1"


def sweep_threads(stage: str, evaluation: Mapping[str, Any], saliency_background: bool) -> int:
    """The dCRF sweep's worker processes (crf_workers); the other scorings, and the dCRF of seeds
    with a saliency background (one label map an image), run in one."""
    if stage == "seeds_crf" and not saliency_background:
        return evaluation["seeds"]["crf_workers"]
    return 1


def segmentation_training(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What shapes the trained segmentation network (a param: changed, it retrains)."""
    return {k: v for k, v in settings.items()
            if k not in (*SEGMENTATION_INFERENCE_KEYS, "init_from_classifier", "checkpoint_every")}


def segmentation_inference(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in SEGMENTATION_INFERENCE_KEYS}


def segmentation_inference_options(settings: Mapping[str, Any]) -> str:
    return cli_options({"scales": settings["test_scales"], "flip": settings["flip"], "crf": settings["crf"]})


def segmentation_sources(inputs: Mapping[str, str]) -> str:
    """train_segmentation's labels and initialisation: `--ground-truth` (no pseudo masks: full
    supervision) or `--masks FILE` (with `--ground-truth-subset FILE` for the semi-supervised
    setting; the subset alone for CCT without weak labels), and `--init-classifier FILE` where the
    backbone starts from the classifier."""
    init = path_option("init-classifier", inputs.get("classifier"))
    if "ground_truth_subset" in inputs:
        subset = path_option("ground-truth-subset", inputs["ground_truth_subset"])
        # No masks with a subset: CCT without weak labels (semi_supervised_options).
        masks = f"{path_option('masks', inputs['masks'])} {subset}" if "masks" in inputs else subset
    else:
        masks = path_option("masks", inputs["masks"]) if "masks" in inputs else "--ground-truth"
    return f"{masks} {init}"


def semi_supervised_options(method: Mapping[str, Any]) -> str:
    """train_segmentation's options of a semi-supervised experiment's method (`semi_supervised_method`):
    nothing for `mix` (its command line as before), ` --semi-method cct` and the decoder counts set
    in the config for `cct` (without weak labels its rule gives no --masks). A leading space: the
    rule appends this to its sources."""
    if method["method"] != "cct":
        return ""
    counts = [f"{name}={count}" for name, count in sorted(method["decoders"].items())]
    return " --semi-method cct" + (f" --cct-decoders {cli_value(counts)}" if counts else "")


def job_device(device: str, gpu: int | bool) -> str:
    """A job's --device: `cuda` where the job asks the scheduler for a GPU (``gpu``) and the config
    says `auto`, so that a job given a GPU it cannot use fails at its start instead of running on
    the CPU for hours (resolve_device); an explicit `cpu`, `cuda` or `cuda:N` is taken as given."""
    return "cuda" if gpu and device == "auto" else device


def runtime_per_attempt(base: int | Callable[[Any], int]) -> Callable[[Any, int], int]:
    """A rule's runtime resource (minutes) that grows with the attempt: ``base`` (a number, or a
    function of the wildcards) the first time, twice that on the first retry, and so on, so that a
    job killed at its time limit gets more time when it is retried (the SLURM profile's
    `retries`). Snakemake passes the arguments by these names."""

    def runtime(wildcards: Any, attempt: int) -> int:
        minutes = base(wildcards) if callable(base) else base
        return int(minutes) * attempt

    return runtime


def partition(resources: Mapping[str, Any], gpu: int | bool) -> dict[str, str]:
    """`slurm_partition` of a job: resources.gpu_partition where it asks for a GPU, else
    resources.cpu_partition; nothing where that key is empty, so that the profile's
    default-resources (or --default-resources) choose, and without them the cluster's default."""
    name = resources.get("gpu_partition" if gpu else "cpu_partition") or ""
    return {"slurm_partition": name} if name else {}


def precision_options(config: Mapping[str, Any]) -> str:
    """``--precision`` and ``--channels-last`` (run-level keys) of the trainings and the network
    inference stages, each only off its default: at the defaults a rule's options, and so its
    params, are those of before."""
    words = []
    if config.get("precision", "fp32") != "fp32":
        words.append(f"--precision {shlex.quote(config['precision'])}")
    if config.get("channels_last", False):
        words.append("--channels-last")
    return "".join(f" {word}" for word in words)
