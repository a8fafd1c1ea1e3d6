"""The load_test asset and its blocking gate in a real training run: Locust drives mlops-serve serving the
challenger from the MLflow registry. A server with a one-RPC limit sheds at 10x and is refused live traffic;
the same challenger on the production settings passes, and only then does `champion` move."""

import shutil

import dagster as dg
import pytest

from mlops_assets.load_test.report import demo_figures
from resources import local_resources
from resources.mlflow_registry import CHAMPION
from sensors.jobs import TRAINING_SELECTION
from tests.conftest import FAST_LOAD_TEST, materialize, training_ops

pytestmark = pytest.mark.slow

TINY_QUEUE = {**FAST_LOAD_TEST, "server_args": ["--max-concurrent-rpcs", "1"]}


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="module")
def refused(features_home, tmp_path_factory, instance):
    home = tmp_path_factory.mktemp("load_test_home")
    shutil.copytree(features_home / "artifacts" / "features", home / "artifacts" / "features")
    resources = local_resources(home)
    ops = {**training_ops(), "load_test": TINY_QUEUE}
    result = materialize(TRAINING_SELECTION, resources, ops=ops, instance=instance, raise_on_error=False)
    return result, resources


def _gate(result):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "load_test_gate"]
    return evaluation


def test_a_server_that_sheds_at_10x_is_refused_with_its_figures(refused):
    result, resources = refused
    load_test = result.output_for_node("load_test")
    assert load_test["tested"] and not load_test["passed"]
    assert load_test["shedding_begins_rps"] is not None
    assert any("RESOURCE_EXHAUSTED" in reason and "error rate" in reason for reason in load_test["reasons"])
    gate = _gate(result)
    assert not gate.passed and "RESOURCE_EXHAUSTED" in gate.description
    # The blocking gate kept champion_model from running: no version took the alias.
    assert resources["registry"].version_by_alias(CHAMPION) is None
    tags = resources["registry"].client().get_model_version("flight_delay", load_test["version"]).tags
    assert tags["load_test_decision"] == "refused" and "RESOURCE_EXHAUSTED" in tags["load_test_reason"]


def test_the_same_challenger_on_production_settings_passes_and_becomes_champion(refused, instance):
    _, resources = refused
    ops = {"load_test": FAST_LOAD_TEST}
    result = materialize(["load_test", "champion_model"], resources, ops=ops, instance=instance)
    assert result.success and _gate(result).passed
    load_test = result.output_for_node("load_test")
    assert load_test["passed"] and load_test["reasons"] == []
    assert [phase["offered_rps"] for phase in load_test["phases"]] == [10.0, 100.0]
    assert load_test["replicas_for_peak"] == 1 and load_test["rss_growth_mib"] < 32
    served, compute = (
        load_test["served_usd_per_1000_predictions"],
        load_test["model_compute_only_usd_per_1000_predictions"],
    )
    # Served requests pay for the server, the protocol and the queue: far above onnxruntime's CPU time alone.
    assert served > 10 * compute > 0
    client = resources["registry"].client()
    run_id = client.get_model_version("flight_delay", load_test["version"]).tags["mlflow_run_id"]
    logged = {artifact.path for artifact in client.list_artifacts(run_id, "load_test")}
    assert logged == {"load_test/latency_vs_load.png", "load_test/server_memory.png"}
    assert "load_test_served_usd_per_1000_predictions" in client.get_run(run_id).data.metrics
    assert str(resources["registry"].version_by_alias(CHAMPION).version) == load_test["version"]
    printed = demo_figures(load_test)
    assert printed["load test"] == "passed" and printed["p99 at 100 req/s"].endswith("(SLO 100 ms)")
    assert printed["cost per 1,000 predictions (served)"].startswith("$")
