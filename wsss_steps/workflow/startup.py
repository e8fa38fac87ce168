"""What the Snakefile does before it plans a job: read and check the run's configs (the main one
and each `datasets_from` file), and check the datasets they name against the run.

The checks that open a dataset (its split lists, masks, the semi-supervised subsets) and the one
that marks changed manifests out of date run once, in the main snakemake process
(`run_startup_checks`); the processes that run one job (a cluster job re-parses the Snakefile)
read the configs only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from wsss_steps.data.sources import invalidate_changed_manifest
from wsss_steps.workflow.config import (
    ConfigError,
    check_config,
    check_dataset_configs,
    generated_split_ids,
    ground_truth_subset_problems,
    inherited_generator,
    invalid,
    missing_splits,
    missing_weight_files,
    needs_seed_masks,
    read_config_file,
    schema_problems,
)
from wsss_steps.workflow.targets import segmentation_experiments, semi_supervised

Log = Callable[[str], None]


class DatasetAdapter(Protocol):
    """What the checks ask of a user's dataset (wsss_steps.data.adapters)."""

    def split_ids(self, split: str) -> Sequence[str]: ...

    def mask_path(self, image_id: str) -> Any: ...


AdapterOpener = Callable[[str], DatasetAdapter]  # dataset name → its adapter (opened once)


def sorted_mapping(value: Any) -> Any:
    """``value`` with every mapping's keys sorted, at every depth (lists keep their order)."""
    if isinstance(value, dict):
        return {key: sorted_mapping(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_mapping(item) for item in value]
    return value


def checked_config(settings: dict[str, Any], schema_path: str | Path,
                   config_files: Sequence[str | Path] = ()) -> dict[str, Any]:
    """A config checked (every problem named, with the files it was read from) and validated
    (schema defaults filled in, in ``settings`` too), its keys sorted: rule params (and the
    options built from them) follow the key order, so reordering keys in a config file is a no-op
    instead of a rerun of every stage."""
    from snakemake.utils import validate  # Snakemake's defaults filling, as the Snakefile's own

    schema = yaml.safe_load(Path(schema_path).read_text())
    check_config(settings, schema, tuple(config_files))
    problems = schema_problems(settings, schema)
    if problems:
        raise invalid(problems, config_files)
    validate(settings, str(schema_path))
    missing = missing_weight_files(settings)
    if missing:
        raise invalid(missing, config_files)
    return sorted_mapping(settings)


def load_run_configs(config: Mapping[str, Any], schema_path: str | Path, config_files: Sequence[str | Path] = (),
                     *, overrides: Mapping[str, Any] | None = None, replaced: bool = True,
                     log: Log | None = None) -> dict[str, dict[str, Any]]:
    """The run's configs by dataset name, each checked and validated (`checked_config`): the main
    config first (read from ``config_files``), then one per file of its `datasets_from` (each a
    whole config of its own: dataset, entries, experiments and stage settings). The run-level keys
    (device, gpu_available, shards, resources) are the main config's.

    Without --replace-workflow-config (``replaced`` false), --configfile and --config are merged
    into config.yaml key by key: config.yaml's dataset.generator merged into a dataset of another
    kind given in ``overrides`` is left out (`inherited_generator`), with a note to ``log``.
    ``config`` itself is left as it is.
    """
    main = copy.deepcopy(dict(config))
    if not replaced and inherited_generator(main, overrides or {}):
        del main["dataset"]["generator"]  # config.yaml's, merged into a dataset of another kind
        if log is not None:
            log(f"dataset.generator of config.yaml is not read: dataset.kind is {main['dataset']['kind']} "
                "(--configfile and --config are merged into config.yaml; --replace-workflow-config replaces it)")
    main = checked_config(main, schema_path, config_files)
    configs = {main["dataset"]["name"]: main}
    for path in main.get("datasets_from", []):
        other = checked_config(read_config_file(path), schema_path, (path,))
        if other.get("datasets_from"):
            raise ConfigError(f"{path}: datasets_from is read from the main config only, not from {path}")
        name = other["dataset"]["name"]
        if name in configs:
            raise ConfigError(f"{path}: dataset name {name!r} is already in this run; "
                              "each dataset needs its own name (results/<name>/)")
        configs[name] = other
    problems = check_dataset_configs(configs)
    if problems:
        raise invalid(problems)
    return configs


def user_datasets(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The datasets read from the user's files: every kind but `generated` (whose ids and masks
    follow from its generator settings)."""
    return [name for name, config in configs.items() if config["dataset"]["kind"] != "generated"]


def invalidate_changed_manifests(datasets: Iterable[str], results: str | Path = "results",
                                 log: Log | None = None) -> None:
    """A manifest whose source files changed content since prepare_data wrote it is marked out of
    date, whatever the files' modification times (a copy made with `cp -p`, `rsync -a` or from a
    tar archive keeps an old one)."""
    for name in datasets:
        for manifest_path in sorted(Path(results, name, "data").glob("*.csv")):
            changed = invalidate_changed_manifest(manifest_path)
            if changed and log is not None:
                log(f"dataset {name}: {len(changed)} file(s) of split {manifest_path.stem} changed content "
                    f"since its manifest was written (e.g. {changed[0]}); prepare_data reruns")


def check_splits(configs: Mapping[str, Mapping[str, Any]], open_adapter: AdapterOpener) -> None:
    """Every split a user's dataset is read on exists (a generated dataset's splits are checked
    with the config)."""
    problems = [f"dataset {name}: {problem}" for name in user_datasets(configs)
                for problem in missing_splits(configs[name], open_adapter(name).split_ids)]
    if problems:
        raise invalid(problems)


def check_masks(configs: Mapping[str, Mapping[str, Any]], open_adapter: AdapterOpener) -> None:
    """A user's dataset (a generated one has every mask): the seed split's images need their masks
    where anything scores them (`needs_seed_masks`: not a WSOL-only run, e.g. on CUB without
    segmentations/), the val split's where a segmentation network is evaluated. Checked here
    rather than by a prepare_data flag: a params flag would rebuild the manifest, and retrain
    everything, whenever experiments with and without those evaluations are swapped."""
    problems = []
    for name in user_datasets(configs):
        config, settings = configs[name], configs[name]["dataset"]
        needed = {}
        if needs_seed_masks(config):
            needed[settings["train_split"]] = "seeds and pseudo masks are scored on that split (its masks are needed)"
        if segmentation_experiments(config):
            needed.setdefault(settings["val_split"], "the segmentation experiments are evaluated on that split "
                                                     "(give every val image its mask, or set segmentation: false)")
        dataset = open_adapter(name)
        for split, why in needed.items():
            missing = [i for i in dataset.split_ids(split) if dataset.mask_path(i) is None]
            if missing:
                problems.append(f"dataset {name}: {len(missing)} image(s) of split {split!r} have no ground-truth "
                                f"mask (e.g. {', '.join(repr(i) for i in missing[:5])}); {why}")
    if problems:
        raise invalid(problems)


def check_ground_truth_subsets(configs: Mapping[str, Mapping[str, Any]], open_adapter: AdapterOpener) -> None:
    """A semi-supervised experiment's ground-truth images are images of the train split with a
    mask (a generated dataset's ids follow from its generator settings, every image with its
    mask)."""
    problems = []
    users = user_datasets(configs)
    for name, config in configs.items():
        subsets = {network: subset for network, (_, subset) in semi_supervised(config).items()}
        if not subsets:
            continue
        settings = config["dataset"]
        split = settings["train_split"]
        if name not in users:
            ids, has_mask = generated_split_ids(settings, split), lambda image_id: True
        else:
            dataset = open_adapter(name)
            ids, has_mask = dataset.split_ids(split), lambda image_id, d=dataset: d.mask_path(image_id) is not None
        problems += ground_truth_subset_problems(name, split, ids, has_mask, subsets)
    if problems:
        raise invalid(problems)


def run_startup_checks(configs: Mapping[str, Mapping[str, Any]], open_adapter: AdapterOpener,
                       results: str | Path = "results", log: Log | None = None) -> None:
    """Before planning, once (the main process): changed manifests marked out of date, then every
    split, mask and ground-truth subset the run reads checked; a ConfigError names every problem
    of a check."""
    invalidate_changed_manifests(configs, results, log)
    check_splits(configs, open_adapter)
    check_masks(configs, open_adapter)
    check_ground_truth_subsets(configs, open_adapter)
