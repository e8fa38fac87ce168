"""Config checks that JSON-schema messages make hard to read, run by the Snakefile before any job.

`unknown_keys` names each unknown or mistyped key with its path, the allowed keys, and the
closest match, and each float given where the schema wants an integer (JSON schema accepts 2.0 as
an integer; the steps do not); `check_references` checks that experiments name configured
classifiers and seeds, once each; `check_sweeps` that every threshold sweep runs forward;
`duplicate_keys` reads a YAML config file and names every key given twice (YAML keeps the last);
`check_dataset_roots` refuses a generated dataset's root that holds someone else's files (Snakemake
would delete it before the generator runs); `missing_weight_files` (on the validated config,
defaults filled in) names every configured ImageNet weights file that does not exist;
`misshapen_keys` names a value given where a section belongs (`dataset: synth`); `check_dataset`
refuses generator settings on another kind and splits a generated dataset lacks; `missing_splits`
and `ground_truth_subset_problems` check splits and semi-supervised subsets against the dataset
(a generated one's ids come from its generator settings). All of them run before a job starts
rather than when its rule runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from wsss_steps.data.generated import SPLITS as GENERATED_SPLITS
from wsss_steps.data.generated import (
    GeneratorError,
    GeneratorSettings,
    check_output_folder,
    split_ids,
)
from wsss_steps.data.manifest import DatasetError, read_id_list


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            return schema
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def unknown_keys(config: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None,
                 path: str = "") -> list[str]:
    """Messages for keys the schema does not allow, each with the allowed keys."""
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    problems: list[str] = []
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types or []
    if isinstance(config, float) and "integer" in types and "number" not in types:
        problems.append(f"config key {path!r} must be an integer, not {config!r}")
    if isinstance(config, Mapping) and schema.get("type") == "object":
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in config.items():
            where = f"{path}.{key}" if path else str(key)
            if key in properties:
                problems += unknown_keys(value, properties[key], root, where)
            elif extra is False:
                allowed = sorted(properties)
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown config key {where!r}{hint}; allowed keys here: {', '.join(allowed)}")
            elif isinstance(extra, Mapping):
                problems += unknown_keys(value, extra, root, where)
    elif isinstance(config, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(config):
            problems += unknown_keys(item, schema["items"], root, f"{path}[{index}]")
    return problems


_SHAPES = {"object": (Mapping, "a mapping (indented key: value lines)"), "array": (list, "a list (- item lines)")}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def misshapen_keys(config: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None,
                   path: str = "") -> list[str]:
    """Messages for each key whose value is not the mapping or list the schema wants there (e.g.
    `dataset: synth`), one line each; the other checks read such sections as what they should be."""
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    kind = schema.get("type")
    shape = _SHAPES.get(kind) if isinstance(kind, str) else None
    if shape is not None and not isinstance(config, shape[0]):
        given = "nothing" if config is None else f"the {type(config).__name__} {_short(config)}"
        return [f"config key {path!r} must be {shape[1]}, not {given}"]
    problems: list[str] = []
    if isinstance(config, Mapping):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, value in config.items():
            inner = properties.get(key, extra if isinstance(extra, Mapping) else None)
            if inner is not None:
                problems += misshapen_keys(value, inner, root, f"{path}.{key}" if path else str(key))
    elif isinstance(config, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(config):
            problems += misshapen_keys(item, schema["items"], root, f"{path}[{index}]")
    return problems


def schema_problems(config: Any, schema: Mapping[str, Any]) -> list[str]:
    """The JSON-schema errors (a required key missing, a value out of range), one line each naming
    the key, instead of Snakemake's message that prints the schema."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
        problems.append(f"config key {where.lstrip('.')!r}: {error.message}" if where else error.message)
    return problems


def invalid(problems: Sequence[str], config_files: Sequence[str | Path] = ()) -> ConfigError:
    """The error listing ``problems``, naming the config files they were read from."""
    where = f" ({', '.join(map(str, config_files))})" if config_files else ""
    return ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(problems))


def read_config_file(path: str | Path, key: str = "datasets_from") -> dict[str, Any]:
    """A whole config read from ``path`` (a ``datasets_from`` file): a YAML mapping, or a one-line
    ConfigError naming the file (missing, not YAML, empty, a list)."""
    where = f"{key}: {path}"
    if not Path(path).is_file():
        raise ConfigError(f"{key}: config file not found: {path}")
    try:
        settings = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(error).split())})") from error
    if settings is None:
        raise ConfigError(f"{where}: the file is empty; it needs a whole config (dataset, classifiers, seeds, "
                          "experiments, evaluation)")
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: the file holds a YAML {type(settings).__name__}, not a config (a mapping of "
                          "keys: dataset:, classifiers:, seeds:, experiments:, evaluation:)")
    return settings


def config_files_in_use(config_files: Sequence[str | Path], command_line_files: Sequence[str | Path],
                        replaced: bool) -> tuple[str | Path, ...]:
    """The config files a run reads: Snakemake lists the Snakefile's `configfile:` (config.yaml)
    among them even under --replace-workflow-config, where only the --configfile files count."""
    if not replaced:
        return tuple(config_files)
    given = {Path(f).absolute() for f in command_line_files}
    return tuple(f for f in config_files if Path(f).absolute() in given)


def inherited_generator(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> bool:
    """Whether ``dataset.generator`` came from config.yaml's generated dataset into a dataset of
    another kind given by --configfile or --config (merged key by key into config.yaml without
    --replace-workflow-config): settings nobody wrote for that dataset, to leave out, not refuse."""
    dataset, given = config.get("dataset"), overrides.get("dataset")
    return (isinstance(dataset, Mapping) and isinstance(given, Mapping) and "generator" in dataset
            and "generator" not in given and given.get("kind", "generated") != "generated")


FULL_SUPERVISION = "full"  # experiments' reserved seeds name: the segmentation network on ground truth


def ground_truth_subset(experiment: Mapping[str, Any]) -> str | None:
    """The split file of a semi-supervised experiment (`segmentation: {ground_truth_subset: FILE}`):
    its images train the segmentation network on their ground truth, the others on pseudo masks."""
    segmentation = experiment.get("segmentation", True)
    return segmentation.get("ground_truth_subset") if isinstance(segmentation, Mapping) else None


SEMI_METHODS = ("mix", "cct")  # segmentation.method of a semi-supervised experiment (docs/methods.md §6, §10)


def semi_supervised_method(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """A semi-supervised experiment's training method, with its defaults: `mix` (one network on the
    subset's ground truth and the others' pseudo masks) or `cct` (cross-consistency training, with
    `weak_labels` and the auxiliary `decoders` per perturbation over CCT's counts)."""
    segmentation = experiment.get("segmentation")
    settings = dict(segmentation) if isinstance(segmentation, Mapping) else {}
    method = {"method": settings.get("method", "mix")}
    if method["method"] == "cct":
        method["weak_labels"] = bool(settings.get("weak_labels", True))
        method["decoders"] = dict(settings.get("decoders") or {})
    return method


def segmentation_name(experiment: Mapping[str, Any]) -> str:
    """The segmentation network's name ({masks} in paths, `method` in the summary and the report):
    the seeds name, `full`, or `<seeds>+<subset file's stem>` for the semi-supervised setting, with
    `+cct` (`+cct_noweak` without weak labels) for cross-consistency training."""
    subset = ground_truth_subset(experiment)
    if not subset:
        return experiment["seeds"]
    name = f"{experiment['seeds']}+{Path(subset).stem}"
    method = semi_supervised_method(experiment)
    if method["method"] == "cct":
        name += "+cct" if method["weak_labels"] else "+cct_noweak"
    return name


def check_references(config: Mapping[str, Any]) -> list[str]:
    """Experiments must name a configured classifier and seed method (or ``full``); per-seeds
    settings must name configured seeds."""
    problems = []
    if FULL_SUPERVISION in config.get("seeds", {}):
        problems.append(f"seeds.{FULL_SUPERVISION}: the name {FULL_SUPERVISION!r} is reserved for the "
                        "fully supervised experiment (ground-truth masks); rename it")
    problems += check_saliency(config)
    problems += check_wsol(config)
    for section in ("affinity", "random_walk"):
        for name in (config.get(section) or {}).get("per_seeds") or {}:
            if name not in config.get("seeds", {}):
                problems.append(f"{section}.per_seeds.{name}: {name!r} is not a key of 'seeds' "
                                f"(configured: {', '.join(config.get('seeds', {}))})")
    seen: dict[tuple[Any, Any, Any], int] = {}
    for index, experiment in enumerate(config.get("experiments", [])):
        subset = ground_truth_subset(experiment)
        key = (experiment.get("classifier"), experiment.get("seeds"), segmentation_name(experiment) if subset else None)
        if key in seen:
            also = f" and ground-truth subset {Path(subset).stem!r}" if subset else ""
            if subset and semi_supervised_method(experiment)["method"] != "mix":
                also += f" (network {key[2]!r})"
            problems.append(f"experiments[{index}]: classifier {key[0]!r} with seeds {key[1]!r}{also} is listed "
                            f"twice (also experiments[{seen[key]}]); its results would be computed once")
        seen.setdefault(key, index)
        if experiment.get("seeds") == FULL_SUPERVISION and experiment.get("segmentation") is False:
            problems.append(f"experiments[{index}]: seeds {FULL_SUPERVISION!r} needs segmentation: true")
        if subset:
            problems += _check_subset(index, experiment, subset)
        for section, key in (("classifiers", "classifier"), ("seeds", "seeds")):
            name = experiment.get(key)
            if key == "seeds" and name == FULL_SUPERVISION:
                continue
            if name not in config.get(section, {}):
                problems.append(f"experiments[{index}].{key} = {name!r} is not a key of '{section}' "
                                f"(configured: {', '.join(config.get(section, {}))})")
    return problems


def _check_subset(index: int, experiment: Mapping[str, Any], subset: str) -> list[str]:
    """A semi-supervised experiment: pseudo masks to complete, and a readable split file."""
    where = f"experiments[{index}].segmentation.ground_truth_subset"
    if experiment.get("seeds") == FULL_SUPERVISION:
        return [f"{where}: seeds {FULL_SUPERVISION!r} trains on every ground-truth mask already"]
    method = semi_supervised_method(experiment)
    if experiment.get("pseudo_masks") is False and (method["method"] == "mix" or method["weak_labels"]):
        return [f"{where}: the other images train on pseudo masks; this experiment has pseudo_masks: false"]
    if method["method"] == "mix" and {"weak_labels", "decoders"} & set(experiment["segmentation"]):
        return [f"experiments[{index}].segmentation: weak_labels and decoders are settings of method cct"]
    try:
        read_id_list(Path(subset))
    except DatasetError as error:
        return [f"{where}: {error}"]
    return []


SALIENCY_BACKGROUND = "saliency_background"  # seeds method: another entry's maps + a saliency background
SALIENCY_SEEDS = frozenset({"advcam_sal", SALIENCY_BACKGROUND})  # seeds methods that read a saliency entry
HINTED_SALIENCY = "c2am_h"
REFINED_SALIENCY = "refined"


def _entry_keys(section: str, name: str, settings: Mapping[str, Any], wanted: Mapping[str, bool],
                method: Any) -> list[str]:
    """Each key of ``wanted`` must be given exactly where ``wanted[key]`` is true."""
    problems = []
    for key, needed in wanted.items():
        given = settings.get(key) is not None
        if needed and not given:
            problems.append(f"{section}.{name}: method {method} needs {key}: <{_KEY_MEANING[key]}>")
        elif given and not needed:
            problems.append(f"{section}.{name}.{key}: not read by method {method}")
    return problems


_KEY_MEANING = {"saliency": "saliency entry", "seeds": "seeds entry", "classifier": "classifiers entry",
                "source": "saliency entry"}


def _chained_background(name: str, inner: str, seeds: Mapping[str, Any]) -> list[str]:
    """A saliency_background entry takes the maps of seeds computed from a classifier: another
    saliency_background entry's file holds its seeds' maps and its own saliency, which would be lost."""
    inner_settings = seeds[inner] or {}
    if inner_settings.get("method") != SALIENCY_BACKGROUND or name == inner:
        return []
    return [f"seeds.{name}.seeds = {inner!r}: seeds.{inner} is a saliency_background entry too, and its "
            f"saliency ({inner_settings.get('saliency')!r}) would be lost; name the seeds it takes "
            f"({inner_settings.get('seeds')!r}) in seeds.{name}.seeds"]


def check_saliency(config: Mapping[str, Any]) -> list[str]:
    """Saliency entries and the seeds entries that read them name configured entries, with the keys
    their method reads and no others, and no entry depends on itself (a C²AM-H whose hints are
    AdvCAM-Sal seeds restricted by that same C²AM-H, a refined entry refining itself)."""
    seeds = config.get("seeds") or {}
    saliency = config.get("saliency") or {}
    classifiers = config.get("classifiers") or {}
    problems: list[str] = []
    edges: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name, settings in seeds.items():
        settings = settings or {}
        method = settings.get("method")
        background = method == SALIENCY_BACKGROUND
        problems += _entry_keys("seeds", name, settings, {"saliency": method in SALIENCY_SEEDS, "seeds": background},
                                method)
        if settings.get("saliency_map") is not None and not background:
            problems.append(f"seeds.{name}.saliency_map: not read by method {method}")
        node = edges.setdefault(("seeds", name), [])
        if settings.get("saliency") is not None:
            if settings["saliency"] not in saliency:
                problems.append(f"seeds.{name}.saliency = {settings['saliency']!r} is not a key of 'saliency' "
                                f"(configured: {', '.join(saliency) or 'none'})")
            node.append(("saliency", settings["saliency"]))
        if settings.get("seeds") is not None:
            if settings["seeds"] not in seeds:
                problems.append(f"seeds.{name}.seeds = {settings['seeds']!r} is not a key of 'seeds'")
            elif background:
                problems += _chained_background(name, settings["seeds"], seeds)
            node.append(("seeds", settings["seeds"]))
    for name, settings in saliency.items():
        settings = settings or {}
        method = settings.get("method")
        hinted = method == HINTED_SALIENCY
        problems += _entry_keys("saliency", name, settings, {"classifier": hinted, "seeds": hinted,
                                                             "source": method == REFINED_SALIENCY}, method)
        node = edges.setdefault(("saliency", name), [])
        if hinted and settings.get("classifier") is not None and settings["classifier"] not in classifiers:
            problems.append(f"saliency.{name}.classifier = {settings['classifier']!r} is not a key of "
                            f"'classifiers' (configured: {', '.join(classifiers)})")
        if hinted and settings.get("seeds") is not None:
            if settings["seeds"] not in seeds:
                problems.append(f"saliency.{name}.seeds = {settings['seeds']!r} is not a key of 'seeds' "
                                f"(configured: {', '.join(seeds)})")
            node.append(("seeds", settings["seeds"]))
        if method == REFINED_SALIENCY and settings.get("source") is not None:
            if settings["source"] not in saliency:
                problems.append(f"saliency.{name}.source = {settings['source']!r} is not a key of 'saliency'")
            node.append(("saliency", settings["source"]))
    reported: set[frozenset[tuple[str, str]]] = set()

    def visit(node: tuple[str, str], path: list[tuple[str, str]]) -> None:
        if node in path:
            cycle = path[path.index(node):] + [node]
            if frozenset(cycle) not in reported:
                reported.add(frozenset(cycle))
                problems.append("saliency and seeds entries depend on themselves: "
                                + " → ".join(f"{section}.{name}" for section, name in cycle))
            return
        for target in edges.get(node, []):
            visit(target, [*path, node])

    for node in list(edges):
        visit(node, [])
    return problems


# Classifier variants by what they need (equal to the registry's flags: tests/test_structure.py);
# the Snakefile checks the config without importing torch.
WSOL_SEED_METHODS = frozenset({"cam", "advcam"})  # seeds methods a WSOL experiment computes on its images


def check_wsol(config: Mapping[str, Any]) -> list[str]:
    """WSOL experiments name a classifiers entry and a seeds entry of method cam/advcam or a
    weight_maps entry (never a name of both sections), once each; weight_maps entries are used."""
    wsol = config.get("wsol") or {}
    seeds, weight_maps = config.get("seeds") or {}, config.get("weight_maps") or {}
    classifiers = config.get("classifiers") or {}
    problems = [f"weight_maps.{name}: also a key of 'seeds'; a WSOL experiment's maps: names one of them"
                for name in weight_maps if name in seeds]
    seen: dict[tuple[Any, Any], int] = {}
    used = set()
    for index, experiment in enumerate(wsol.get("experiments") or []):
        where = f"wsol.experiments[{index}]"
        classifier, maps = experiment.get("classifier"), experiment.get("maps")
        pair = (classifier, maps)
        if pair in seen:
            problems.append(f"{where}: classifier {classifier!r} with maps {maps!r} is listed twice "
                            f"(also wsol.experiments[{seen[pair]}])")
        seen.setdefault(pair, index)
        if classifier not in classifiers:
            problems.append(f"{where}.classifier = {classifier!r} is not a key of 'classifiers' "
                            f"(configured: {', '.join(classifiers)})")
        if maps in weight_maps:
            used.add(maps)
        elif maps in seeds:
            method = (seeds[maps] or {}).get("method")
            if method not in WSOL_SEED_METHODS:
                problems.append(f"{where}.maps = {maps!r}: seeds of method {method} are not computed on the WSOL "
                                f"images; use an entry of method {' or '.join(sorted(WSOL_SEED_METHODS))}")
        else:
            problems.append(f"{where}.maps = {maps!r} is neither a key of 'seeds' ({', '.join(seeds)}) nor of "
                            f"'weight_maps' ({', '.join(weight_maps) or 'none configured'})")
    problems += [f"weight_maps.{name}: no wsol.experiments entry names it (maps: {name}), so it would "
                 "never be trained" for name in weight_maps if name not in used]
    for name, settings in weight_maps.items():
        settings = settings or {}
        if settings.get("method", "i") != "ii":
            problems += [f"weight_maps.{name}.{key}: read by method ii only (method: ii)"
                         for key in ("margin", "embedding_epochs", "embedding_lr") if key in settings]
    if not config.get("experiments") and not wsol.get("experiments"):
        problems.append("experiments: empty, and wsol.experiments too: nothing to run")
    if wsol.get("experiments") and wsol.get("calibration_split", "train") == wsol.get("evaluation_split", "val"):
        problems.append("wsol: calibration_split and evaluation_split are the same split; the box threshold "
                        "must be chosen on other images than the ones it is scored on")
    return problems


ORDINARY_VARIANTS = frozenset({"oc_cse", "p_oc", "p_noc"})
PUZZLE_VARIANTS = frozenset({"puzzle", "p_oc", "p_noc"})


def check_classifiers(config: Mapping[str, Any]) -> list[str]:
    """``ordinary`` is given exactly for the variants that read it, names another classifiers
    entry and never leads back to itself; puzzle variants get a crop their 2×2 tiles divide."""
    classifiers = config.get("classifiers") or {}
    problems = []
    for name, settings in classifiers.items():
        settings = settings or {}
        variant, ordinary = settings.get("variant"), settings.get("ordinary")
        if variant in ORDINARY_VARIANTS and ordinary is None:
            problems.append(f"classifiers.{name}: variant {variant} needs ordinary: <classifiers entry> "
                            "(its ordinary classifier, e.g. a variant: cam entry)")
        elif variant not in ORDINARY_VARIANTS and ordinary is not None:
            problems.append(f"classifiers.{name}.ordinary: read by {', '.join(sorted(ORDINARY_VARIANTS))} "
                            f"only, not by {variant}")
        elif ordinary is not None and ordinary not in classifiers:
            problems.append(f"classifiers.{name}.ordinary = {ordinary!r} is not a key of 'classifiers' "
                            f"(configured: {', '.join(classifiers)})")
        else:
            chain, current = [name], ordinary
            while current is not None and current in classifiers and current not in chain:
                chain.append(current)
                current = (classifiers[current] or {}).get("ordinary")
            if current is not None and current in chain:
                problems.append(f"classifiers.{name}.ordinary: the chain {' → '.join([*chain, current])} "
                                "is a cycle")
        if settings.get("loss") == "softmax" and variant != "cam":
            problems.append(f"classifiers.{name}.loss = softmax: the WSOL classifier is variant cam, not {variant} "
                            "(the other variants' terms are multi-label)")
        stride, crop = settings.get("output_stride", 16), settings.get("crop", 512)
        if variant in PUZZLE_VARIANTS and isinstance(crop, int) and isinstance(stride, int) and crop % (2 * stride):
            problems.append(f"classifiers.{name}.crop = {crop}: variant {variant} needs a crop divisible by "
                            f"2 × output_stride = {2 * stride} (its 2×2 tiles' CAMs merge into the image's)")
    return problems


def check_sweeps(config: Mapping[str, Any]) -> list[str]:
    """Every ``evaluation.<stage>.*thresholds`` sweep [start, stop, step] must have step > 0 and
    start <= stop (the schema checks the count and the range 0..1)."""
    problems = []
    for stage, settings in (config.get("evaluation") or {}).items():
        for key, sweep in (settings or {}).items() if isinstance(settings, Mapping) else ():
            if not key.endswith("thresholds") or not isinstance(sweep, list) or len(sweep) != 3:
                continue
            start, stop, step = sweep
            if not all(isinstance(v, (int, float)) for v in sweep):
                continue
            if step <= 0 or start > stop:
                problems.append(f"evaluation.{stage}.{key} = {sweep}: a sweep is [start, stop, step] with "
                                "step > 0 and start <= stop")
    return problems


def check_dataset_roots(config: Mapping[str, Any]) -> list[str]:
    """A generated dataset's root must be absent, empty or a dataset the generator wrote: Snakemake
    removes a rule's output folder before the job, so the generator's own check comes too late."""
    dataset = config.get("dataset") or {}
    if dataset.get("kind") != "generated" or not isinstance(dataset.get("root"), str):
        return []
    try:
        check_output_folder(Path(dataset["root"]))
    except GeneratorError as error:
        return [f"dataset.root (kind: generated): {error}; with your own images use kind: custom"]
    return []


WSOL_SPLITS = {"calibration_split": "train", "evaluation_split": "val"}  # wsol's split keys, their defaults


def used_splits(config: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(key, split) of every split a run reads: the dataset's train and val splits, and the WSOL
    splits where wsol.experiments are listed (defaults where not given)."""
    dataset, wsol = config.get("dataset") or {}, config.get("wsol") or {}
    splits = [(f"dataset.{key}", dataset.get(key, key[:-len("_split")])) for key in ("train_split", "val_split")]
    if wsol.get("experiments"):
        splits += [(f"wsol.{key}", wsol.get(key, default)) for key, default in WSOL_SPLITS.items()]
    return splits


def check_dataset(config: Mapping[str, Any]) -> list[str]:
    """Generator settings belong to a generated dataset (elsewhere nothing reads them), and a
    generated dataset's splits are the generator's (train, val)."""
    dataset = config.get("dataset") or {}
    kind = dataset.get("kind")
    if kind != "generated":
        return [f"dataset.generator: read by kind: generated only, not by kind: {kind}; remove it"
                ] if "generator" in dataset else []
    return [f"{key} = {split!r}: a generated dataset's splits are {', '.join(GENERATED_SPLITS)}"
            for key, split in used_splits(config) if split not in GENERATED_SPLITS]


def missing_splits(config: Mapping[str, Any], dataset_split_ids: Callable[[str], Sequence[str]]) -> list[str]:
    """A user's dataset: every split the run reads (`used_splits`) exists, asked of its adapter
    (``dataset_split_ids`` raises DatasetError for a split it lacks), before the jobs that read it."""
    problems = []
    for key, split in used_splits(config):
        try:
            dataset_split_ids(split)
        except DatasetError as error:
            problems.append(f"{key} = {split!r}: {error}")
    return problems


def generated_split_ids(dataset: Mapping[str, Any], split: str) -> list[str]:
    """The image ids of a split of a generated dataset (validated settings), before it exists."""
    return split_ids(GeneratorSettings(**(dataset.get("generator") or {})), split)


def ground_truth_subset_problems(dataset: str, split: str, ids: Sequence[str], has_mask: Callable[[str], bool],
                                 subsets: Mapping[str, str]) -> list[str]:
    """Semi-supervised experiments (``subsets``: segmentation name → split file): their ground-truth
    images are images of the train split ``split`` (``ids``) with a mask."""
    train_ids = set(ids)
    problems = []
    for masks, subset in subsets.items():
        subset_ids = read_id_list(Path(subset))
        outside = [i for i in subset_ids if i not in train_ids]
        unmasked = [i for i in subset_ids if i in train_ids and not has_mask(i)]
        for bad, what in ((outside, f"are not images of split {split!r}"), (unmasked, "have no ground-truth mask")):
            if bad:
                problems.append(f"dataset {dataset}, experiment {masks}: {len(bad)} id(s) of the ground-truth "
                                f"subset {subset} {what} (e.g. {', '.join(map(repr, bad[:5]))})")
    return problems


def needs_seed_masks(config: Mapping[str, Any]) -> bool:
    """Whether every image of the seed split (the train split) needs its ground-truth mask: WSSS
    experiments score seeds and pseudo masks there (and train full or semi-supervised segmentation
    on them), saliency entries are scored there. WSOL alone reads none: PxAP is computed where the
    evaluation images have masks (CUB's official download has no segmentations/)."""
    return bool(config.get("experiments")) or bool(config.get("saliency"))


def check_dataset_configs(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Several datasets in one run (``datasets_from``): each keeps its own entries, but an entry
    name is a wildcard value shared by every dataset's rules, so it must mean the same kind of
    entry everywhere (a seeds entry computed from a classifier, seeds with a saliency background,
    or a weight_maps entry); else two rules would claim the same files."""
    kinds: dict[str, dict[str, str]] = {}
    for dataset, config in configs.items():
        for name, settings in (config.get("seeds") or {}).items():
            background = (settings or {}).get("method") == SALIENCY_BACKGROUND
            kinds.setdefault(name, {})[dataset] = "seeds with a saliency background" if background else "computed seeds"
        for name in config.get("weight_maps") or {}:
            kinds.setdefault(name, {})[dataset] = "a weight_maps entry"
    problems = []
    for name, by_dataset in kinds.items():
        if len(set(by_dataset.values())) > 1:
            said = "; ".join(f"{kind} in {dataset}" for dataset, kind in by_dataset.items())
            problems.append(f"entry name {name!r} means different kinds of entry across the run's datasets ({said}); "
                            "give one of them another name")
    return problems


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that records every mapping key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in keys:
                self.duplicates.append(f"key {key!r} on line {line} repeats the one on line {keys[key]}")
            keys.setdefault(key, line)
        return super().construct_mapping(node, deep)


def duplicate_keys(path: str | Path) -> list[str]:
    """Messages for every key given twice in one mapping of the YAML file ``path``."""
    with open(path) as handle:
        loader = _StrictLoader(handle)
        loader.duplicates = []
        try:
            loader.get_single_data()
        finally:
            loader.dispose()
    return [f"{path}: {message} (YAML would silently keep the last)" for message in loader.duplicates]


def check_config(config: Mapping[str, Any], schema: Mapping[str, Any],
                 config_files: tuple[str | Path, ...] = ()) -> None:
    """Raises ConfigError listing every duplicated key, unknown or mistyped key, dangling
    reference, backward sweep, unsafe generated-dataset root and setting of another dataset kind,
    naming ``config_files``. A section that is not the mapping or list it should be is named alone
    (the other checks read the sections)."""
    problems = [message for path in config_files for message in duplicate_keys(path)]
    if not isinstance(config, Mapping):
        problems.append(f"a config is a mapping of keys (dataset:, classifiers:, seeds:, experiments:, ...), "
                        f"not a {type(config).__name__}")
    elif misshapen := misshapen_keys(config, schema):
        problems += misshapen
    else:
        problems += unknown_keys(config, schema) + check_references(config) + check_classifiers(config)
        problems += check_sweeps(config)
        problems += check_dataset_roots(config) + check_dataset(config)
    if problems:
        raise invalid(problems, config_files)


def missing_weight_files(config: Mapping[str, Any]) -> list[str]:
    """Messages for each ``backbone_weights`` file that will be read but does not exist."""
    used = [(f"classifiers.{name}", settings) for name, settings in config.get("classifiers", {}).items()
            if settings.get("pretrained")]
    relation = config.get("relation", {})
    if relation.get("backbone") != "classifier":
        used.append(("relation", relation))
    segmentation = config.get("segmentation", {})
    if segmentation.get("pretrained"):
        used.append(("segmentation", segmentation))
    problems = []
    for where, settings in used:
        weights = settings.get("backbone_weights")
        if weights and not Path(weights).is_file():
            problems.append(f"{where}.backbone_weights: file not found: {weights} "
                            f"(backbone {settings.get('backbone')})")
    return problems
