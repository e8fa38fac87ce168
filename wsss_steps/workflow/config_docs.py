"""The configuration reference (docs/config.md), generated from the config's JSON schema.

`config_reference(schema)` renders schemas/config.schema.yaml as Markdown: one section per
top-level key and one table per object of keys (key path, type, default, allowed values,
description). It follows local ``$ref``s (the referring node's own keywords win, so a key's own
description or default replaces its definition's), the entries of maps (``additionalProperties``
schemas: ``classifiers.<name>.variant``), the items of arrays (``experiments[].seeds``) and the
object alternatives of ``oneOf``/``anyOf``. A key without a description is listed all the same,
with its type and default; `undescribed_keys` names them.

Regenerate after editing the schema (tests/test_docs.py fails while the file is out of date)::

    python -m wsss_steps.workflow.config_docs > docs/config.md
    python -m wsss_steps.workflow.config_docs --undescribed   # the keys without a description
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
COMMAND = "python -m wsss_steps.workflow.config_docs > docs/config.md"
MAP_ENTRY = "<name>"  # stands for an entry name in the key paths of maps
NO_DEFAULT = "—"
COLUMNS = ("Key", "Type", "Default", "Allowed values", "Description")


@dataclass(frozen=True)
class Key:
    """One key of the configuration: its path, its schema with $refs resolved, and where it sits."""

    path: str
    schema: Mapping[str, Any]
    required: bool
    own_description: bool  # the description is the key's own, not its $ref target's


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# ---------------------------------------------------------------------------------------------
# Schema walking


def _pointer(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#"):
        raise ValueError(f"only local $refs are supported, not {ref!r}")
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"$ref {ref!r} does not resolve in the schema")
        node = node[part]
    if not isinstance(node, Mapping):
        raise ValueError(f"$ref {ref!r} does not name a schema")
    return node


def resolve(node: Mapping[str, Any], root: Mapping[str, Any], _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """``node`` with its ``$ref`` chain merged in: the target's keywords, overridden by the node's own."""
    if "$ref" not in node:
        return dict(node)
    ref = node["$ref"]
    if ref in _seen:
        raise ValueError(f"$ref cycle through {ref!r}")
    merged = resolve(_pointer(root, ref), root, (*_seen, ref))
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _types(schema: Mapping[str, Any]) -> list[str]:
    declared = schema.get("type")
    if declared is not None:
        return [declared] if isinstance(declared, str) else list(declared)
    values = schema["enum"] if "enum" in schema else [schema["const"]] if "const" in schema else None
    if values is not None:
        return list(dict.fromkeys(_json_type(v) for v in values))
    if "properties" in schema or "additionalProperties" in schema:
        return ["object"]
    return []


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _alternatives(schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [resolve(alt, root) for word in ("oneOf", "anyOf") for alt in schema.get(word, [])]


def _entry_schema(schema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema of a map's entries (``additionalProperties`` given as a schema), else None."""
    extra = schema.get("additionalProperties")
    return resolve(extra, root) if isinstance(extra, Mapping) else None


def _item_schema(schema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any] | None:
    items = schema.get("items")
    return resolve(items, root) if isinstance(items, Mapping) else None


def containers(path: str, schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The objects with their own keys that the key at ``path`` holds, as (path, schema): itself,
    its map entries (``path.<name>``), its array items (``path[]``) or its object alternatives."""
    schema = resolve(schema, root)
    found: list[tuple[str, dict[str, Any]]] = []
    if "properties" in schema:
        found.append((path, schema))
    entry = _entry_schema(schema, root)
    if entry is not None:
        found += containers(f"{path}.{MAP_ENTRY}", entry, root)
    item = _item_schema(schema, root)
    if item is not None:
        found += containers(f"{path}[]", item, root)
    for alternative in _alternatives(schema, root):
        found += [c for c in containers(path, alternative, root) if c[0] not in {p for p, _ in found}]
    return found


def keys_of(path: str, schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[Key]:
    """The direct keys of an object schema (its ``properties``), in schema order."""
    required = set(schema.get("required", []))
    prefix = f"{path}." if path else ""
    return [Key(f"{prefix}{name}", resolve(raw, root), name in required, "description" in raw)
            for name, raw in schema.get("properties", {}).items()]


def all_keys(schema: Mapping[str, Any]) -> Iterator[Key]:
    """Every key of the configuration, depth first in schema order."""

    def walk(key: Key) -> Iterator[Key]:
        yield key
        for path, container in containers(key.path, key.schema, schema):
            for child in keys_of(path, container, schema):
                yield from walk(child)

    for top in keys_of("", schema, schema):
        yield from walk(top)


def undescribed_keys(schema: Mapping[str, Any], own: bool = False) -> list[str]:
    """The key paths without a description; with ``own``, also those whose only description is
    their ``$ref`` target's (e.g. the naming rule of ``$defs/name``)."""
    return [key.path for key in all_keys(schema)
            if not key.schema.get("description") or (own and not key.own_description)]


# ---------------------------------------------------------------------------------------------
# Rendering


def _literal(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"`{text}`"


def _text(text: str) -> str:
    """Schema prose as Markdown: one line, and ``<`` outside code spans escaped, so that
    ``results/<dataset>/`` is not taken for an HTML tag."""
    parts = " ".join(str(text).split()).split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def _cell(text: str) -> str:
    """Table-cell text: one line, pipes escaped (also inside code spans, as GFM tables need)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def type_text(schema: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    schema = resolve(schema, root)
    names = []
    for name in _types(schema):
        if name == "array":
            item = _item_schema(schema, root)
            item_type = type_text(item, root) if item is not None else ""
            name = f"array of {item_type}" if item_type and " or " not in item_type else "array"
        elif name == "object" and _entry_schema(schema, root) is not None and "properties" not in schema:
            name = f"map of {type_text(_entry_schema(schema, root) or {}, root) or 'any'}"
        names.append(name)
    for alternative in _alternatives(schema, root):
        names += [t for t in type_text(alternative, root).split(" or ") if t]
    return " or ".join(dict.fromkeys(names))


def _bounds(schema: Mapping[str, Any]) -> list[str]:
    """Numeric bounds as one part, e.g. ``≥ 0, < 1`` (none: an empty list)."""
    signs = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
    bounds = [f"{sign} {json.dumps(schema[word])}" for word, sign in signs if word in schema]
    return [", ".join(bounds)] if bounds else []


def allowed_text(schema: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    """The values a key accepts beyond its type: enum, const, bounds, pattern, sizes, items."""
    schema = resolve(schema, root)
    parts: list[str] = []
    if "enum" in schema:
        parts.append(", ".join(_literal(v) for v in schema["enum"]))
    if "const" in schema:
        parts.append(_literal(schema["const"]))
    parts += _bounds(schema)
    if "pattern" in schema:
        parts.append(f"matches `{schema['pattern']}`")
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None and low == high:
        parts.append(f"{low} items")
    else:
        parts += [f"≥ {low} items"] if low is not None else []
        parts += [f"≤ {high} items"] if high is not None else []
    item = _item_schema(schema, root)
    if item is not None and "properties" not in item:
        item_allowed = allowed_text(item, root)
        if item_allowed:
            parts.append(f"each {item_allowed}")
    if "propertyNames" in schema:
        names = allowed_text(schema["propertyNames"], root)
        if names:
            parts.append(f"entry names: {names}")
    if "minProperties" in schema:
        parts.append(f"≥ {schema['minProperties']} entries")
    alternatives = []  # (its type, its allowed values) per oneOf/anyOf alternative
    for alternative in _alternatives(schema, root):
        detail = allowed_text(alternative, root)
        kind = "" if "const" in alternative or "enum" in alternative else type_text(alternative, root)
        alternatives.append(" ".join(t for t in (kind, detail) if t))
    if any(allowed_text(a, root) for a in _alternatives(schema, root)):  # else the type says it all
        parts.append(" or ".join(alternatives))
    return "; ".join(parts)


def default_text(key: Key) -> str:
    if "default" in key.schema:
        return _literal(key.schema["default"])
    return "*required*" if key.required else NO_DEFAULT


def _row(key: Key, root: Mapping[str, Any]) -> str:
    cells = (f"`{key.path}`", type_text(key.schema, root), default_text(key), allowed_text(key.schema, root),
             _text(key.schema.get("description", "")))
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(keys: Sequence[Key], root: Mapping[str, Any]) -> list[str]:
    return ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS), *(_row(k, root) for k in keys)]


def _paragraph(text: str | None) -> list[str]:
    return [_text(text), ""] if text else []


def _container_blocks(key: Key, root: Mapping[str, Any], top: bool) -> list[str]:
    """The tables of the objects a key holds, then (depth first) those of their keys."""
    lines: list[str] = []
    for path, container in containers(key.path, key.schema, root):
        if not (top and path == key.path):
            lines += [f"### `{path}`", ""]
            if path != key.path:  # a map entry's or an array item's own description
                lines += _paragraph(container.get("description"))
        children = keys_of(path, container, root)
        lines += [*_table(children, root), ""]
        for child in children:
            lines += _container_blocks(child, root, top=False)
    return lines


def _section(key: Key, root: Mapping[str, Any]) -> list[str]:
    lines = [f"## `{key.path}`", ""]
    if not containers(key.path, key.schema, root):  # a single value: its row says everything
        return [*lines, *_table([key], root), ""]
    lines += _paragraph(key.schema.get("description"))
    facts = [f"Type: {type_text(key.schema, root)}", f"default: {default_text(key)}"]
    allowed = allowed_text(key.schema, root)
    if allowed:
        facts.append(f"allowed: {allowed}")
    return [*lines, "; ".join(facts) + ".", "", *_container_blocks(key, root, top=True)]


def config_reference(schema: Mapping[str, Any]) -> str:
    """The Markdown reference of a configuration JSON schema (see the module docstring)."""
    top_keys = keys_of("", schema, schema)
    lines = [
        "# Configuration reference",
        "",
        f"*Generated from `schemas/config.schema.yaml` by `{COMMAND}`: do not edit by hand.*",
        "",
        "Edit the schema (its descriptions, defaults, enums) and regenerate; tests/test_docs.py fails",
        "while this file and the schema disagree.",
        "",
        *_paragraph(schema.get("description")),
        f"Key paths: `a.b` is key `b` of section `a`; `{MAP_ENTRY}` stands for an entry name of your "
        "choosing, `[]` for each item of a list. Default *required*: the key must be given; "
        f"{NO_DEFAULT}: optional, without a schema default (the step or method decides).",
        "",
        "Sections: " + ", ".join(f"[`{k.path}`](#{k.path.lower()})" for k in top_keys) + ".",
        "",
    ]
    for key in top_keys:
        lines += _section(key, schema)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsss_steps.workflow.config_docs",
                                     description="Print the configuration reference (docs/config.md) "
                                     "generated from the config's JSON schema.")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH, help="schema file (default: %(default)s)")
    parser.add_argument("--undescribed", action="store_true",
                        help="print the keys without a description (own or through $ref), one a line, instead")
    args = parser.parse_args(argv)
    schema = load_schema(args.schema)
    text = "".join(f"{path}\n" for path in undescribed_keys(schema)) if args.undescribed else config_reference(schema)
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
