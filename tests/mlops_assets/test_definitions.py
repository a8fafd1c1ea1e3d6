import subprocess
import sys
from pathlib import Path

import dagster as dg

from mlops_assets.definitions import defs

PIPELINE = {
    "raw_flights": "ingestion",
    "validated_features": "features",
    "training_data": "training",
    "trained_model": "training",
    "onnx_model": "training",
    "evaluation_report": "evaluation",
    "registered_model": "registry",
    "champion_model": "registry",
    "batch_predictions": "inference",
}


def test_definitions_load_with_groups_kinds_and_checks():
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    for name, group in PIPELINE.items():
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == group, name
        assert node.kinds, f"{name} has no kinds for the UI"
    checks = {key.name for key in graph.asset_check_keys}
    assert {"schema", "null_fraction", "value_ranges", "category_sets", "row_count"} <= checks
    assert {"onnx_parity", "promotion_gate"} <= checks
    # Gates block what follows them; the one warning (a month judged without served traffic) gates nothing.
    warnings = {k.name for k in graph.asset_check_keys if not graph.get_check_spec(k).blocking}
    assert warnings == {"served_traffic"}
    assert set(definitions.resources) >= {"source", "store", "served", "registry"}
    for name in ("drift_report", "outcomes", "live_performance"):
        assert graph.get(dg.AssetKey(name)).group_name == "monitoring", name


def test_monthly_partitions_cover_2013():
    graph = defs().resolve_asset_graph()
    keys = graph.get(dg.AssetKey("raw_flights")).partitions_def.get_partition_keys()
    assert keys[0] == "2013-01" and keys[-1] == "2013-12" and len(keys) == 12


def test_dagster_cli_validates_the_code_location(tmp_path):
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [Path(sys.executable).parent / "dagster", "definitions", "validate", "-m", "mlops_assets.definitions"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(root)},
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Validation successful" in result.stdout + result.stderr
