"""What may import what, read from the source (every import statement, function-level ones included):

- serving imports neither dagster nor mlops_assets, sensors or resources: a server follows the registry
  and must run where no pipeline code is installed;
- the plain logic beside each stage imports no dagster, directly or through another project module, so
  its rules read as rules and run anywhere;
- sensors, resources and the assets never import the demo scripts, which live in deploy/local;
- assets live in stage packages (mlops_assets/<stage>/), which definitions.py finds without a list.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mlops_assets", "sensors", "resources", "serving", "deploy")
PLAIN = [
    "mlops_assets.features.expectations",
    "mlops_assets.features_spec",
    "mlops_assets.lineage",
    "mlops_assets.metadata",
    "mlops_assets.training.family",
    "mlops_assets.training.families",
    "mlops_assets.training.fit_loop",
    "mlops_assets.training.logistic",
    "mlops_assets.training.mlp",
    "mlops_assets.training.onnx_export",
    "mlops_assets.training.preprocessing",
    "mlops_assets.training.values",
    "mlops_assets.training.feedback",
    "mlops_assets.months",
    "mlops_assets.oip_client",
    "mlops_assets.onnx_metrics",
    "mlops_assets.rollout.gates",
    "mlops_assets.rollout.plan",
    "mlops_assets.rollout.readings",
    "mlops_assets.compression.quantization",
    "mlops_assets.compression.scorecard",
    "mlops_assets.compression.session_probe",
    "mlops_assets.load_test.candidate_server",
    "mlops_assets.load_test.cost",
    "mlops_assets.load_test.driver",
    "mlops_assets.load_test.figures",
    "mlops_assets.load_test.locust_phase",
    "mlops_assets.load_test.memory",
    "mlops_assets.load_test.plots",
    "mlops_assets.load_test.probe",
    "mlops_assets.load_test.report",
    "mlops_assets.load_test.verdict",
    "mlops_assets.monitoring.bands",
    "mlops_assets.monitoring.detector",
    "mlops_assets.monitoring.domain_classifier",
    "mlops_assets.monitoring.performance",
    "mlops_assets.monitoring.served",
    "mlops_assets.monitoring.stattests",
]
DEMO = ("deploy.local.demo", "deploy.local.demo_monitoring", "deploy.local.demo_traffic", "deploy.local.runs")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def imports(module: str) -> set[str]:
    """Every module `module` names in an import statement, resolved to full dotted names."""
    names = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from mlops_assets import months` names the module mlops_assets.months.
            names.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
    return names


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        for name in imports(current):
            if name not in seen:
                seen.add(name)
                # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
                parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
                todo.extend(m for m in (name, *parents) if m in MODULES)
    return seen


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_the_lists_name_real_modules():
    assert set(PLAIN) <= set(MODULES) and set(DEMO) <= set(MODULES)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("serving")))
def test_serving_imports_no_pipeline_code(module):
    assert not _top(_closure(module)) & {"dagster", "mlops_assets", "sensors", "resources"}, module


@pytest.mark.parametrize("module", PLAIN)
def test_plain_logic_imports_no_dagster(module):
    reached = _closure(module)
    assert "dagster" not in _top(reached), sorted(n for n in reached if n.split(".")[0] in PACKAGES)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(("sensors", "resources", "mlops_assets"))))
def test_automation_resources_and_assets_never_import_the_demo(module):
    assert not _closure(module) & set(DEMO), module


def test_assets_live_in_stage_packages():
    """Top-level modules of mlops_assets are shared rules (months, the feature contract); assets sit in a stage."""
    top_level = [m for m in MODULES if m.count(".") == 1 and m.startswith("mlops_assets.")]
    with_assets = [m for m in top_level if re.search(r"@dg\.(asset|multi_asset|asset_check)\b", MODULES[m].read_text())]
    assert with_assets == [], with_assets
    stages = {m.split(".")[1] for m in MODULES if m.count(".") >= 2 and m.startswith("mlops_assets.")}
    assert {"ingestion", "features", "training", "compression", "evaluation", "registry", "deployment"} <= stages


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("serving")))
def test_serving_modules_stay_small(module):
    """Serving is split by responsibility; a module past 300 lines is holding two."""
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= 300, f"{module} has {lines} lines"
