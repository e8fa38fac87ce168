"""The package's layout contract: steps are thin CLIs over library subpackages, imports go down only,
every step has the same CLI shape, and the registries are what the schema and the CLIs offer."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wsss_steps.data.adapters import DATASET_KINDS
from wsss_steps.training.variants import CLASSIFIER_VARIANTS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wsss_steps"
STEPS = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "cli"))
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
# Steps that run no network start without torch (importing it costs a job seconds before any work,
# and the default run has 100+ jobs): torch stays inside the modules and functions that run one.
STEPS_WITHOUT_TORCH = ("affinity_labels", "evaluate_masks", "evaluate_saliency", "export_png", "generate_dataset",
                       "inspect", "merge_maps", "prepare_data", "pseudo_masks", "report_figures", "report_screenshot",
                       "saliency_seeds", "summarize", "wsol_images")
# evaluate_wsol runs the classifier for Top-1 Loc (torch loads in start_run, not at import)
STEPS_WITH_A_NETWORK = ("evaluate_wsol", "random_walk", "saliency_maps", "seeds", "segment", "train_classifier",
                        "train_relation", "train_saliency", "train_segmentation", "train_weight_map", "weight_maps")


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wsss_steps"):
            modules.add(node.module)
            if node.module == "wsss_steps":
                modules.update(f"wsss_steps.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.startswith("wsss_steps"))
    return modules


def test_no_step_imports_a_step_and_the_library_imports_none() -> None:
    step_modules = {f"wsss_steps.{name}" for name in STEPS}
    for path in PACKAGE.rglob("*.py"):
        found = _imports(path) & step_modules
        assert not found, f"{path.relative_to(ROOT)} imports the step(s) {sorted(found)}"


def test_library_subpackages_import_only_downward() -> None:
    # Layers, lowest first: a module may import its own layer or the ones below.
    layers = [{"data", "workflow"}, {"store", "networks"}, {"methods"}, {"evaluation"}, {"training", "report"}]
    rank = {name: level for level, names in enumerate(layers) for name in names}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue
        own = rank[parts[0]]
        for module in _imports(path):
            target = module.split(".")[1] if module.count(".") else ""
            if target in rank:
                assert rank[target] <= own, f"{path.relative_to(ROOT)} imports {module} (a higher layer)"


def test_every_step_is_listed_as_running_a_network_or_not() -> None:
    assert sorted(STEPS_WITHOUT_TORCH + STEPS_WITH_A_NETWORK) == STEPS


@pytest.mark.parametrize("step", STEPS_WITHOUT_TORCH)
def test_steps_without_a_network_do_not_import_torch(step: str) -> None:
    code = (f"import sys, wsss_steps.{step}\n"
            "if 'torch' in sys.modules:\n"
            "    sys.exit('torch is imported; the wsss_steps modules loaded: '\n"
            "             + ' '.join(sorted(m for m in sys.modules if m.startswith('wsss_steps'))))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"import wsss_steps.{step}: {run.stderr.strip()}"


@pytest.mark.parametrize("step", STEPS)
def test_every_step_has_the_same_cli_shape(step: str) -> None:
    module = importlib.import_module(f"wsss_steps.{step}")
    parser = module.build_parser()
    assert parser.prog == f"python -m wsss_steps.{step}"
    tree = ast.parse((PACKAGE / f"{step}.py").read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    assert ast.unparse(main.returns) == "int", f"{step}.main must return an exit code"
    options = {o for action in parser._actions for o in action.option_strings}
    assert "--log" not in options  # steps log to stderr; the rules redirect it
    if "--threads" in options:
        assert {"--device", "--threads"} <= options
        assert parser.get_default("threads") is None and parser.get_default("device") == "auto"
    if "--shard" in options:
        assert parser.get_default("shard") == 0 and parser.get_default("num_shards") == 1


def test_config_checks_know_the_variants_needs() -> None:
    from wsss_steps.workflow.config import ORDINARY_VARIANTS, PUZZLE_VARIANTS

    assert ORDINARY_VARIANTS == {name for name, cls in CLASSIFIER_VARIANTS.items() if cls.needs_ordinary()}
    assert PUZZLE_VARIANTS == {name for name, cls in CLASSIFIER_VARIANTS.items() if cls.puzzle}


def test_schema_enums_are_the_registries() -> None:
    classifier = SCHEMA["properties"]["classifiers"]["additionalProperties"]["properties"]["variant"]
    assert classifier["enum"] == sorted(CLASSIFIER_VARIANTS)
    assert sorted(SCHEMA["properties"]["dataset"]["properties"]["kind"]["enum"]) == sorted(DATASET_KINDS)
    from wsss_steps import prepare_data, train_classifier

    variant = next(a for a in train_classifier.build_parser()._actions if "--variant" in a.option_strings)
    kind = next(a for a in prepare_data.build_parser()._actions if "--kind" in a.option_strings)
    assert list(variant.choices) == sorted(CLASSIFIER_VARIANTS)
    assert list(kind.choices) == sorted(DATASET_KINDS)
