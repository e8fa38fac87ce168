"""The documentation in docs/: every method-notes citation resolves, and the configuration
reference is the one the schema generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from wsss_steps.workflow.config_docs import COMMAND, config_reference, main, undescribed_keys

ROOT = Path(__file__).resolve().parent.parent
METHODS_DOC = ROOT / "docs" / "methods.md"
CONFIG_DOC = ROOT / "docs" / "config.md"
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
# Where code and settings cite the method notes.
CITING = ("wsss_steps", "rules", "benchmarks", "diagnostics", "tests", "schemas", "configs",
          "config.yaml", "Snakefile")
TEXT_SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".md", ".rst", ".sh", ".txt", ""}
# "docs/methods.md §5", "docs/methods.md §5", "docs/methods.md §5", and further sections listed right after
# one of them: "docs/methods.md §1 and §3", "docs/methods.md §4, §5" (a bare number there is not one).
CITATION = re.compile(r"(?:METHODS|docs/methods\.md)\s+(?:§|sections?\s+)(\d+)"
                      r"((?:\s*(?:,|and|or|&)\s*§\d+)*)")


def _citing_files() -> list[Path]:
    files = []
    for name in CITING:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and "__pycache__" not in p.parts and p.name != "test_docs.py"]
    return files


def _citations() -> dict[int, list[str]]:
    """Cited section number → the places ("file:line") citing it."""
    cited: dict[int, list[str]] = {}
    for path in _citing_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in CITATION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            numbers = [match.group(1), *re.findall(r"\d+", match.group(2))]
            for number in numbers:
                cited.setdefault(int(number), []).append(f"{path.relative_to(ROOT)}:{line}")
    return cited


def _sections() -> set[int]:
    return {int(n) for n in re.findall(r"^## (\d+)\. ", METHODS_DOC.read_text(encoding="utf-8"), re.MULTILINE)}


def test_citation_pattern() -> None:
    found = [[m.group(1), *re.findall(r"\d+", m.group(2))] for m in CITATION.finditer(
        "(docs/methods.md §2). docs/methods.md §1 and §3; docs/methods.md §8, §4; docs/methods.md §7; METHODS = (...); "
        "docs/methods.md §5, 10 iterations")]
    assert found == [["2"], ["1", "3"], ["8", "4"], ["7"], ["5"]]


def test_method_citations_resolve() -> None:
    cited = _citations()
    assert cited, "no docs/methods.md §N citation found: has the pattern or the tree changed?"
    sections = _sections()
    missing = {n: places for n, places in cited.items() if n not in sections}
    assert not missing, "citations of sections docs/methods.md lacks (a '## N. ' heading): " + "; ".join(
        f"§{n} in {', '.join(places[:5])}" for n, places in sorted(missing.items()))


def test_method_notes_name_existing_files() -> None:
    named = set(re.findall(r"`((?:wsss_steps|rules|benchmarks|diagnostics|configs|schemas|tests)/[\w./-]+)`",
                           METHODS_DOC.read_text(encoding="utf-8")))
    assert named, "docs/methods.md names no module"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/methods.md names files that do not exist (moved or renamed?): {missing}"


def test_config_reference_is_current() -> None:
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    expected = config_reference(schema)
    actual = CONFIG_DOC.read_text(encoding="utf-8") if CONFIG_DOC.exists() else ""
    assert actual == expected, (f"docs/config.md does not match schemas/config.schema.yaml; regenerate it: "
                                f".venv/bin/{COMMAND}")


SMALL_SCHEMA = {
    "description": "A test configuration.",
    "type": "object",
    "required": ["model"],
    "$defs": {
        "name": {"description": "an entry name", "type": "string", "pattern": "^[a-z]+$"},
        "ramp": {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 2, "maxItems": 2},
    },
    "properties": {
        "model": {
            "description": "the network",
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {"enum": ["small", "large"], "description": "how big"},
                "optimiser": {
                    "type": "object",
                    "properties": {"lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
                                          "description": "learning rate"}},
                },
                "warmup": {"$ref": "#/$defs/ramp", "default": [0.0, 1.0]},
                "owner": {"$ref": "#/$defs/name"},
            },
        },
        "entries": {
            "type": "object",
            "default": {},
            "additionalProperties": {"type": "object", "properties": {"size": {"type": "integer", "default": 3}}},
        },
        "runs": {
            "type": "array",
            "items": {"type": "object", "properties": {"entry": {"$ref": "#/$defs/name",
                                                                 "description": "an entries key"}}},
        },
        "threshold": {"oneOf": [{"type": "number", "minimum": 0}, {"const": "auto"}], "default": "auto"},
    },
}


def _row(text: str, key: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_config_reference_of_a_small_schema() -> None:
    text = config_reference(SMALL_SCHEMA)
    assert text.splitlines()[2].startswith("*Generated from") and COMMAND in text.splitlines()[2]
    assert "## `model`" in text and "## `entries`" in text and "### `model.optimiser`" in text
    # a nested key, its default and description
    assert _row(text, "model.optimiser.lr") == ["`model.optimiser.lr`", "number", "`0.1`", "> 0", "learning rate"]
    # an enum, required without a default
    assert _row(text, "model.kind") == ["`model.kind`", "string", "*required*", "`small`, `large`", "how big"]
    # $refs: the definition's constraints and description, the key's own default on top
    assert _row(text, "model.warmup") == ["`model.warmup`", "array of number", "`[0.0, 1.0]`",
                                          "2 items; each ≥ 0", ""]
    assert _row(text, "model.owner") == ["`model.owner`", "string", "—", "matches `^[a-z]+$`", "an entry name"]
    assert _row(text, "runs[].entry")[4] == "an entries key"  # the key's own description wins
    # map entries and array items
    assert "### `entries.<name>`" in text and _row(text, "entries.<name>.size")[2] == "`3`"
    assert "### `runs[]`" in text
    assert _row(text, "threshold") == ["`threshold`", "number or string", "`auto`", "number ≥ 0 or `auto`", ""]
    assert undescribed_keys(SMALL_SCHEMA) == ["model.optimiser", "model.warmup", "entries",
                                              "entries.<name>.size", "runs", "threshold"]


def test_config_reference_escapes_markdown() -> None:
    schema = {"type": "object", "properties": {
        "pattern": {"type": "string", "pattern": "^(a|b)$", "description": "a | b, see results/<dataset>/ or `<x>`"}}}
    row = next(line for line in config_reference(schema).splitlines() if line.startswith("| `pattern`"))
    assert "`^(a\\|b)$`" in row and "a \\| b" in row and "results/&lt;dataset>/" in row and "`<x>`" in row


def test_unresolvable_ref_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not resolve"):
        config_reference({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})


def test_main_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out == config_reference(yaml.safe_load(SCHEMA.read_text(encoding="utf-8")))
