import base64
import json
import re
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from mlops_assets.compression import scorecard
from mlops_assets.compression.model_scorecard import ScorecardConfig
from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from mlops_assets.months import held_out
from mlops_assets.training import families
from mlops_assets.training.fit_loop import parameter_count, predict
from mlops_assets.training.mlp import FlightDelayNet, NetConfig, prune_hidden_units
from mlops_assets.training.onnx_export import export_network, with_preprocessing
from mlops_assets.training.preprocessing import Preprocessing
from resources import local_resources
from resources.mlflow_registry import CHALLENGER
from sensors.jobs import TRAINING_SELECTION
from tests.conftest import materialize, training_ops

# Gate tests need the same winner on every run: ranking on accuracy alone ignores timing noise.
ACCURACY_ONLY = {"profile": "accuracy_only", "profiles": {"accuracy_only": {"accuracy": 1.0}}}
CANDIDATES = ("onnx_model", "pruned_model", "student_model", "int8_dynamic_model", "int8_static_model")
INT8_AUC_TOLERANCE = 0.01  # held-out ROC AUC an int8 model may lose against its float32 source


def compression_ops(scorecard_overrides: dict | None = None, **train) -> dict:
    ops = training_ops(**train)  # small candidates: tests/conftest.py FAST_COMPRESSION
    ops["model_scorecard"] = {**ops["model_scorecard"], **(scorecard_overrides or {})}
    return ops


@pytest.fixture(scope="module")
def pipeline(features_home, tmp_path_factory):
    """One training run through the promotion gate, compression candidates and scorecard included."""
    home = tmp_path_factory.mktemp("compression_home")
    shutil.copytree(features_home / "artifacts" / "features", home / "artifacts" / "features")
    resources = local_resources(home)
    result = materialize(TRAINING_SELECTION, resources, ops=compression_ops())
    assert result.success
    return result, resources


def _outputs(result) -> dict[str, dict]:
    return {name: result.output_for_node(name) for name in CANDIDATES}


def _check(result, asset: str, name: str = "onnx_parity"):
    return next(e for e in result.get_asset_check_evaluations() if e.asset_key.path == [asset] and e.check_name == name)


def _weight_shapes(onnx_bytes: bytes) -> list[tuple[int, ...]]:
    graph = onnx.load_from_string(onnx_bytes).graph
    return [tuple(i.dims) for i in graph.initializer if re.fullmatch(r"net_mlp\.\d+\.weight", i.name)]


def test_pruning_removes_units_so_parameters_and_file_shrink(pipeline):
    result, resources = pipeline
    out = _outputs(result)
    baseline, pruned = out["onnx_model"], out["pruned_model"]
    assert pruned.hidden == [32, 16]  # [64, 32] x 0.5, in two steps of x sqrt(0.5)
    assert pruned.parameters < baseline.parameters
    assert pruned.size_bytes < baseline.size_bytes
    store = resources["store"]
    shapes = _weight_shapes(store.read_bytes(pruned.onnx_key))
    assert [s[0] for s in shapes[:-1]] == pruned.hidden  # the exported matrices really are smaller
    assert _check(result, "pruned_model").passed
    steps = result.asset_materializations_for_node("pruned_model")[0].metadata["steps"].value
    assert steps.count("\n") == 3  # header, rule, two steps


def test_removing_units_without_outgoing_weights_leaves_predictions_unchanged():
    """Structured pruning slices the right rows and columns: units that pass nothing on go, nothing else changes."""
    rng = np.random.default_rng(0)
    prep = Preprocessing(
        numeric_mean=[0.0] * len(NUMERIC_FEATURES),
        numeric_std=[1.0] * len(NUMERIC_FEATURES),
        vocabularies={c: ["a", "b", "c"] for c in CATEGORICAL_FEATURES},
    )
    torch.manual_seed(0)
    network = FlightDelayNet(prep, NetConfig(hidden=(8, 4)))
    first, second, output = network.linears()
    with torch.no_grad():
        second.weight[:, [1, 3, 4, 6]] = 0.0  # four units of the first layer feed nothing on
        output.weight[:, [0, 2]] = 0.0  # two units of the second layer neither
    frame = pd.DataFrame({c: rng.normal(size=64) for c in NUMERIC_FEATURES})
    frame = frame.assign(**{c: rng.choice(["a", "b", "c", "new"], 64) for c in CATEGORICAL_FEATURES})

    pruned = prune_hidden_units(network, prep, keep_fraction=0.5)

    assert pruned.config.hidden == (4, 2)
    assert parameter_count(pruned) < parameter_count(network)
    np.testing.assert_allclose(predict(pruned, prep, frame), predict(network, prep, frame), rtol=0, atol=1e-6)


def test_student_is_smaller_than_its_teacher_and_tracked_under_the_training_run(pipeline):
    result, resources = pipeline
    out = _outputs(result)
    teacher, student = out["onnx_model"], out["student_model"]
    assert student.hidden == [16, 8]  # the teacher's widths x width_fraction 0.25
    assert student.parameters < teacher.parameters
    assert student.size_bytes < teacher.size_bytes
    assert _check(result, "student_model").passed
    run = MlflowClient(resources["registry"].tracking_uri).get_run(student.run_id)
    assert run.data.tags["mlflow.parentRunId"] == teacher.run_id
    assert run.data.tags["candidate"] == "student" and run.data.tags["train_months"] == "2013-01"
    assert float(run.data.params["temperature"]) == 2.0


def test_both_int8_models_are_smaller_than_float32_and_within_the_auc_tolerance(pipeline):
    result, resources = pipeline
    out = _outputs(result)
    source = result.output_for_node("best_float_model")
    figures = result.output_for_node("model_scorecard").figures
    store = resources["store"]
    for asset, name in (("int8_dynamic_model", "int8_dynamic"), ("int8_static_model", "int8_static")):
        int8 = out[asset]
        assert int8.source == source.candidate
        assert int8.size_bytes < source.size_bytes <= out["onnx_model"].size_bytes
        assert abs(figures[name]["auc"] - figures[source.candidate]["auc"]) <= INT8_AUC_TOLERANCE
        parity = _check(result, asset)
        assert parity.passed
        assert parity.metadata["mean_abs_diff"].value <= parity.metadata["mean_tolerance"].value
        assert parity.metadata["auc_abs_diff"].value <= parity.metadata["auc_tolerance"].value
        graph = onnx.load_from_string(store.read_bytes(int8.onnx_key)).graph
        ops = [n.op_type for n in graph.node]
        assert ops.count("LabelEncoder") == 3  # the string front-end is attached after quantization, unquantized
        assert [o.name for o in graph.output] == ["probability"]
        if name == "int8_static":
            assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
        else:
            assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    calibration = result.asset_materializations_for_node("int8_static_model")[0].metadata["calibration_rows"]
    assert calibration.value == 512


# Fixed figures: "fast" answers single rows quicker, "bulk" pushes more rows per CPU-second.
FIXED = {
    "baseline": {"auc": 0.700, "latency_p50_ms_one_thread": 0.10, "latency_p99_ms_one_thread": 0.20,
                 "rows_per_s_all_threads": 50_000, "size_bytes": 1_000_000, "peak_memory_mb": 20.0,
                 "auc_noise": 0.69, "auc_unseen": 0.65, "cost_per_1k_usd_one_thread": 2e-7},
    "fast": {"auc": 0.698, "latency_p50_ms_one_thread": 0.03, "latency_p99_ms_one_thread": 0.05,
             "rows_per_s_all_threads": 60_000, "size_bytes": 300_000, "peak_memory_mb": 12.0,
             "auc_noise": 0.69, "auc_unseen": 0.65, "cost_per_1k_usd_one_thread": 1.5e-7},
    "bulk": {"auc": 0.697, "latency_p50_ms_one_thread": 0.08, "latency_p99_ms_one_thread": 0.15,
             "rows_per_s_all_threads": 400_000, "size_bytes": 280_000, "peak_memory_mb": 12.0,
             "auc_noise": 0.69, "auc_unseen": 0.65, "cost_per_1k_usd_one_thread": 0.3e-7},
}  # fmt: skip


def _winner(figures, profile: str, max_auc_loss: float = 0.01) -> scorecard.Verdict:
    weights = ScorecardConfig(profile=profile).weights()
    return scorecard.choose(figures, weights, baseline="baseline", max_auc_loss=max_auc_loss)[0]


def test_scores_respond_to_the_weights_so_the_profile_can_change_the_winner():
    assert _winner(FIXED, "realtime").name == "fast"
    assert _winner(FIXED, "batch").name == "bulk"
    verdicts = scorecard.choose(FIXED, {"accuracy": 1.0}, baseline="baseline", max_auc_loss=0.01)
    assert [v.name for v in verdicts] == ["baseline", "fast", "bulk"]
    assert verdicts[0].axes["accuracy"] == 1.0 and verdicts[2].axes["accuracy"] == pytest.approx(0.7)


def test_the_floor_rejects_a_candidate_that_loses_too_much_auc_however_fast_it_is():
    degraded = {**FIXED, "bulk": {**FIXED["bulk"], "auc": 0.680}}  # 0.02 below the baseline
    assert _winner(degraded, "batch", max_auc_loss=0.05).name == "bulk"
    verdicts = scorecard.choose(degraded, ScorecardConfig(profile="batch").weights(), baseline="baseline",
                                max_auc_loss=0.01)  # fmt: skip
    assert verdicts[0].name == "fast"
    assert verdicts[-1].name == "bulk" and not verdicts[-1].passed and "rejected" in verdicts[-1].reason


def test_unknown_profile_or_all_zero_weights_fail_clearly():
    import dagster as dg

    with pytest.raises(dg.Failure, match="not one of"):
        ScorecardConfig(profile="nightly").weights()
    with pytest.raises(ValueError, match="not all zero"):
        scorecard.choose(FIXED, {"accuracy": 0.0}, baseline="baseline", max_auc_loss=0.01)


def test_floor_rejects_a_copy_with_corrupted_weights_measured_for_real(pipeline):
    """Corrupt a copy of the pruned model (smaller than the baseline), measure it like any candidate, rank it."""
    result, resources = pipeline
    store = resources["store"]
    pruned = result.output_for_node("pruned_model")
    report = result.output_for_node("model_scorecard")
    loaded = families.load_checkpoint(store.read_bytes(pruned.checkpoint_key))
    network, prep = loaded.model, loaded.prep
    with torch.no_grad():
        network.linears()[-1].weight.neg_()  # flips every score's ranking: AUC becomes 1 - AUC
    frame = load_features(store, [report.month])
    corrupted = scorecard.measure(
        {"corrupted": with_preprocessing(export_network(network), prep)},
        frame,
        scorecard.Measurement(latency_runs=50, throughput_repeats=10, rounds=1),
        price_per_vcpu_hour=0.048,
    )["corrupted"]
    figures = {"baseline": report.figures["baseline"], "corrupted": corrupted}
    assert corrupted["auc"] < 0.5 < figures["baseline"]["auc"]
    size_only = {"size": 1.0}  # the corrupted copy is the smaller file: it wins when accuracy has no floor
    assert scorecard.choose(figures, size_only, baseline="baseline", max_auc_loss=1.0)[0].name == "corrupted"
    verdicts = scorecard.choose(figures, size_only, baseline="baseline", max_auc_loss=0.01)
    assert [v.name for v in verdicts] == ["baseline", "corrupted"]
    assert not verdicts[1].passed and "rejected" in verdicts[1].reason


def test_registered_challenger_is_the_winner_and_carries_its_scorecard(pipeline):
    result, resources = pipeline
    registry = resources["registry"]
    report = result.output_for_node("model_scorecard")
    winner = report.winner
    version = result.output_for_node("registered_model").version
    assert str(registry.version_by_alias(CHALLENGER).version) == version
    tags = registry.client().get_model_version(registry.model_name, version).tags
    assert tags["candidate"] == winner
    assert tags["candidate_run_id"] == report.winner_candidate.run_id
    assert tags["scorecard_profile"] == "realtime" and tags["scorecard_month"] == "2013-03"
    assert tags["scorecard_rank"] == "1 of 5"
    assert float(tags["scorecard_auc"]) == pytest.approx(report.figures[winner]["auc"], abs=1e-5)
    for key in ("latency_p99_ms_one_thread", "rows_per_s_all_threads", "size_bytes", "peak_memory_mb",
                "auc_noise", "auc_unseen", "cost_per_1k_usd_one_thread"):  # fmt: skip
        assert f"scorecard_{key}" in tags
    assert all(name in tags["scorecard_ranking"] for name in report.figures)
    assert tags["mlflow_run_id"] == result.output_for_node("trained_model").run_id
    assert registry.onnx_bytes(version) == resources["store"].read_bytes(report.winner_candidate.onnx_key)
    evaluation = result.output_for_node("evaluation_report")
    assert evaluation.candidate == winner
    assert float(tags["eval_auc"]) == pytest.approx(evaluation.challenger["auc"], abs=1e-6)

    artifacts = MlflowClient(registry.tracking_uri).list_artifacts(report.winner_candidate.training_run_id,
                                                                     "scorecard")  # fmt: skip
    assert {a.path for a in artifacts} == {"scorecard/realtime.md", "scorecard/realtime.png", "scorecard/realtime.json"}


def test_scorecard_shows_a_table_and_a_plot_in_the_ui(pipeline):
    result, _ = pipeline
    metadata = result.asset_materializations_for_node("model_scorecard")[0].metadata
    table = metadata["scorecard"].value
    for name in ("baseline", "pruned", "student", "int8_dynamic", "int8_static"):
        assert f"| {name} |" in table or f"| **{name}** |" in table
    assert "AUC noise" in table and "$ / 1k" in table and "peak MiB" in table
    assert metadata["winner"].value in metadata["why"].value
    png = base64.b64decode(metadata["plot"].value.split("base64,")[1].rstrip(")"))
    assert png.startswith(b"\x89PNG")
    assert json.loads(metadata["weights"].value)["latency"] == 4.0


def test_the_default_held_out_month_is_outside_the_training_window():
    assert held_out(["2013-01", "2013-02", "2013-03"], "2013-04") == "2013-05"  # the demo
    assert held_out(["2013-01"], "2013-02") == "2013-03"  # the tests' FAST_TRAIN
    assert held_out(["2013-03", "2013-04", "2013-05"], "2013-02") == "2013-01"  # a retraining window
    assert held_out(["2013-10", "2013-11"], "2013-12") == "2014-01"


def test_memory_is_measured_in_a_fresh_process(pipeline):
    result, _ = pipeline
    figures = result.output_for_node("model_scorecard").figures
    for name, f in figures.items():
        assert f["memory_method"] == "VmHWM", name
        assert 0 < f["peak_memory_mb"] < 500, name
        assert f["latency_p50_ms_one_thread"] <= f["latency_p99_ms_one_thread"], name
        assert f["cost_per_1k_usd_one_thread"] > 0, name
