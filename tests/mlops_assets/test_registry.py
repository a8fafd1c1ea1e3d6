import dagster as dg
import pytest

from mlops_assets.registry.assets import PromotionConfig, decide
from resources.mlflow_registry import CHALLENGER, CHAMPION
from sensors.jobs import TRAINING_SELECTION
from tests.conftest import materialize
from tests.mlops_assets.test_compression import ACCURACY_ONLY, compression_ops

GATE = "registered_model_promotion_gate"


def _gate(result):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate")


def _run(resources, gate=None, candidates_learn=True, **train):
    """The training job: train, compress, score, evaluate, register, gate, promote."""
    ops = compression_ops(ACCURACY_ONLY, **train)
    if not candidates_learn:
        # learning_rate 0 everywhere: every candidate keeps its random initial weights.
        ops["pruned_model"] = {**ops["pruned_model"], "learning_rate": 0.0}
        ops["student_model"] = {**ops["student_model"], "learning_rate": 0.0}
    if gate:
        ops[GATE] = gate
    return materialize(TRAINING_SELECTION, resources, ops=ops, raise_on_error=False)


@pytest.fixture
def first(resources):
    result = _run(resources)
    assert result.success
    return result


def test_first_model_is_evaluated_registered_and_promoted_over_the_floor(first, resources):
    registry = resources["registry"]
    report = first.asset_materializations_for_node("evaluation_report")[0].metadata
    assert 0.55 < report["auc"].value < 1.0
    assert 0 < report["brier"].value < 0.25
    assert 0 < report["latency_p50_ms"].value <= report["latency_p99_ms"].value
    assert report["throughput_rows_per_s"].value > 1000
    winner = first.output_for_node("model_scorecard").winner_candidate
    assert report["size_bytes"].value == winner.size_bytes
    assert "| ROC AUC |" in report["comparison"].value and "champion_auc" not in report

    version = first.output_for_node("registered_model").version
    assert str(registry.version_by_alias(CHAMPION).version) == version
    assert str(registry.version_by_alias(CHALLENGER).version) == version
    tags = registry.client().get_model_version(registry.model_name, version).tags
    assert tags["mlflow_run_id"] == first.output_for_node("trained_model").run_id
    assert len(tags["data_hash"]) == 64 and tags["train_months"] == "2013-01"
    assert tags["promotion_decision"] == "approved" and "floor" in tags["promotion_reason"]
    assert _gate(first).metadata["decision"].value == "approved"


def test_gate_refuses_a_worse_challenger_and_the_champion_stays(first, resources):
    registry = resources["registry"]
    champion = first.output_for_node("registered_model").version

    # learning_rate 0 leaves every candidate at its random initial weights: AUC near 0.5.
    second = _run(resources, candidates_learn=False, learning_rate=0.0)

    # A refusal is a decision: the run succeeds, the gate warns, champion_model says what it kept.
    assert second.success
    gate = _gate(second)
    assert not gate.passed and gate.metadata["decision"].value == "refused"
    assert gate.severity == dg.AssetCheckSeverity.WARN
    assert gate.metadata["champion_version"].value == champion
    assert gate.metadata["challenger_auc"].value < gate.metadata["champion_auc"].value - 0.005
    report = second.asset_materializations_for_node("evaluation_report")[0].metadata
    assert report["champion_auc"].value == pytest.approx(gate.metadata["champion_auc"].value)
    challenger = second.output_for_node("registered_model").version
    kept = second.asset_materializations_for_node("champion_model")[0].metadata
    assert kept["decision"].value == "kept" and kept["version"].value == champion
    assert kept["summary"].value.startswith(f"kept v{champion}, refused v{challenger}: AUC")
    assert kept["train_months"].value == "2013-01"
    assert str(registry.version_by_alias(CHAMPION).version) == champion
    assert str(registry.version_by_alias(CHALLENGER).version) == challenger
    tags = registry.client().get_model_version(registry.model_name, challenger).tags
    assert tags["promotion_decision"] == "refused" and tags["promotion_compared_to"] == champion


def test_equal_challenger_is_promoted_against_the_champion(first, resources):
    second = _run(resources)
    assert second.success
    assert "champion" in _gate(second).metadata["reason"].value
    assert (
        str(resources["registry"].version_by_alias(CHAMPION).version)
        == second.output_for_node("registered_model").version
    )


def test_floor_refuses_a_first_model(resources):
    result = _run(resources, gate={"auc_floor": 0.99})
    assert result.success
    assert _gate(result).metadata["decision"].value == "refused"
    kept = result.asset_materializations_for_node("champion_model")[0].metadata
    assert kept["decision"].value == "kept" and kept["version"].value is None
    assert resources["registry"].version_by_alias(CHAMPION) is None


@pytest.mark.parametrize(
    ("challenger", "champion", "passed"),
    [(0.70, None, True), (0.59, None, False), (0.70, 0.704, True), (0.70, 0.706, False)],
)
def test_decision_rule(challenger, champion, passed):
    assert decide(challenger, champion, PromotionConfig(auc_margin=0.005, auc_floor=0.6))[0] is passed


def test_the_champion_is_an_mlflow_citizen_a_dataframe_in_probabilities_out(first, resources):
    """mlflow.pyfunc on a DataFrame of raw columns gives what onnxruntime gives on the served file."""
    import mlflow
    import numpy as np

    from mlops_assets import onnx_metrics
    from mlops_assets.features.assets import load_features
    from mlops_assets.features_spec import FEATURES

    registry = resources["registry"]
    rows = load_features(resources["store"], ["2013-03"]).head(50)[list(FEATURES)]
    with registry._fluent():
        model = mlflow.pyfunc.load_model(f"models:/{registry.model_name}@{CHAMPION}")
        info = mlflow.models.get_model_info(f"models:/{registry.model_name}@{CHAMPION}")
    predicted = model.predict(rows)
    version = registry.version_by_alias(CHAMPION).version
    expected = onnx_metrics.scores(registry.onnx_bytes(version), rows)
    np.testing.assert_allclose(np.asarray(predicted["probability"]).reshape(-1), expected, rtol=1e-6)
    assert [i["name"] for i in info.signature.inputs.to_dict()] == list(FEATURES)
    assert info.saved_input_example_info is not None
