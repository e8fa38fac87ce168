"""Config checks that JSON-schema messages make hard to read, run by the Snakefile before any job.

`unknown_keys` names each unknown or mistyped key with its path, the allowed keys, and the
closest match; `check_references` checks that experiments name configured classifiers and seeds;
`missing_weight_files` (on the validated config, defaults filled in) names every configured
ImageNet weights file that does not exist, before a job starts rather than when its rule runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


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


FULL_SUPERVISION = "full"  # experiments' reserved seeds name: the segmentation network on ground truth


def check_references(config: Mapping[str, Any]) -> list[str]:
    """Experiments must name a configured classifier and seed method (or ``full``); per-seeds
    settings must name configured seeds."""
    problems = []
    if FULL_SUPERVISION in config.get("seeds", {}):
        problems.append(f"seeds.{FULL_SUPERVISION}: the name {FULL_SUPERVISION!r} is reserved for the "
                        "fully supervised experiment (ground-truth masks); rename it")
    for section in ("affinity", "random_walk"):
        for name in (config.get(section) or {}).get("per_seeds") or {}:
            if name not in config.get("seeds", {}):
                problems.append(f"{section}.per_seeds.{name}: {name!r} is not a key of 'seeds' "
                                f"(configured: {', '.join(config.get('seeds', {}))})")
    for index, experiment in enumerate(config.get("experiments", [])):
        if experiment.get("seeds") == FULL_SUPERVISION and experiment.get("segmentation") is False:
            problems.append(f"experiments[{index}]: seeds {FULL_SUPERVISION!r} needs segmentation: true")
        for section, key in (("classifiers", "classifier"), ("seeds", "seeds")):
            name = experiment.get(key)
            if key == "seeds" and name == FULL_SUPERVISION:
                continue
            if name not in config.get(section, {}):
                problems.append(f"experiments[{index}].{key} = {name!r} is not a key of '{section}' "
                                f"(configured: {', '.join(config.get(section, {}))})")
    return problems


def check_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Raises ConfigError listing every unknown key and dangling reference."""
    problems = unknown_keys(config, schema) + check_references(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


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
