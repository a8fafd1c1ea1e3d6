"""What may import what, read from the source (every import statement, function-level ones included):

- serving imports neither dagster nor mlops_assets, sensors or resources: a server follows the registry
  and must run where no pipeline code is installed;
- the plain logic beside each stage imports no dagster, directly or through another project module, so
  its rules read as rules and run anywhere;
- sensors and resources never import the demo scripts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mlops_assets", "sensors", "resources", "serving")
PLAIN = [
    "mlops_assets.checks",
    "mlops_assets.features_spec",
    "mlops_assets.lineage",
    "mlops_assets.metadata",
    "mlops_assets.modeling",
    "mlops_assets.months",
    "mlops_assets.onnx_metrics",
    "mlops_assets.quantization",
    "mlops_assets.scorecard",
    "mlops_assets.session_probe",
    "mlops_assets.monitoring.bands",
    "mlops_assets.monitoring.detector",
    "mlops_assets.monitoring.domain_classifier",
    "mlops_assets.monitoring.performance",
    "mlops_assets.monitoring.served",
    "mlops_assets.monitoring.stattests",
]
DEMO = ("mlops_assets.demo", "mlops_assets.demo_monitoring", "mlops_assets.demo_traffic")


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
                if name in MODULES:
                    todo.append(name)
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


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(("sensors", "resources"))))
def test_automation_and_resources_never_import_the_demo(module):
    assert not _closure(module) & set(DEMO), module
