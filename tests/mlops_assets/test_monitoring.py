import json
import math

import dagster as dg
import pytest

from mlops_assets import months
from mlops_assets.features.assets import features_key, load_features
from mlops_assets.features_spec import FEATURES, NUMERIC_FEATURES, ROW_KEY, TARGET
from mlops_assets.monitoring import detector, stattests
from mlops_assets.monitoring.drift_report import SERVED_CHECK, DriftConfig, drift_html_key
from mlops_assets.monitoring.served import served_rows
from resources import LocalArtifactStore, ServedPredictions, local_resources
from sensors.drift import drift_sensor, live_performance_sensor
from tests.conftest import materialize
from tests.sensors.support import SHIFTED, SHIFTED_COLUMN, SHIFTED_TOO, UNCHANGED, drift_report, scaled, shifted


@pytest.mark.parametrize(
    ("method", "score", "threshold", "drifted"),
    [
        ("ks", 0.01, 0.05, True),  # p-values drift below the threshold...
        ("ks", 0.20, 0.05, False),
        ("chisquare", 0.05, 0.05, False),  # ...strictly, for most tests
        ("ks", 0.05, 0.05, True),  # KS uses <=
        ("wasserstein", 0.6, 0.5, True),  # distances drift at or above it
        ("wasserstein", 0.5, 0.5, True),
        ("wasserstein", 0.4, 0.5, False),
        ("K-S p_value", 0.01, 0.05, True),  # the display names Evidently reports when it picked the method
        ("Jensen-Shannon distance", 0.01, 0.05, False),
        ("Wasserstein distance (normed)", 0.6, 0.5, True),
    ],
)
def test_drift_flag_follows_each_methods_direction(method, score, threshold, drifted):
    assert stattests.is_drifted(method, score, threshold) is drifted


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="no drift rule"):
        stattests.is_drifted("mystery", 0.1, 0.1)


def test_config_builds_the_detector_and_refuses_what_it_cannot_calibrate():
    config = DriftConfig(column_thresholds={"temp": 2.0}, calibration_factor=2.0, classifier_threshold=0.7, seed=3)
    calibration, classifier, rule = config.calibration(), config.classifier(), config.rule()
    assert calibration.overrides == {"temp": 2.0} and calibration.factor == 2.0 and calibration.seed == 3
    assert classifier.threshold == 0.7 and classifier.seed == 3 and "temp" not in classifier.columns
    assert rule.min_importance_share == 0.05 and rule.drift_share == 0.3
    with pytest.raises(ValueError, match="unknown columns"):
        DriftConfig(column_thresholds={"tmp": 1.0}).calibration()
    with pytest.raises(ValueError, match="distance method"):
        DriftConfig(num_method="ks").calibration()


def _record(ts: str, frame, version: str = "1") -> dict:
    def values(column):
        flat = frame[column].tolist()
        return [None if isinstance(v, float) and math.isnan(v) else v for v in flat]

    return {
        "ts": ts,
        "request_id": ts,
        "model_name": "flight_delay",
        "model_version": version,
        "row_keys": frame[ROW_KEY].tolist(),
        "inputs": {c: values(c) for c in FEATURES},
        "outputs": {"probability": [0.5] * len(frame)},
    }


def _ship(store, day: str, records: list[dict], tail: bytes = b"") -> str:
    """A shipped segment of `records` (JSON lines, as the server writes them) for UTC day 'YYYY-MM-DD'."""
    name = f"predictions-{day.replace('-', '')}-{day.replace('-', '')}T000000-4242-000001.jsonl"
    key = f"prediction_log/{day.replace('-', '/')}/{name}"
    store.write_bytes(key, b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)
    return key


@pytest.fixture
def traffic(tmp_path, monitored_home) -> dict:
    """Served traffic in its own store: 400 shifted rows inside 2013-04, plus records the reader must skip."""
    january = load_features(local_resources(monitored_home)["store"], ["2013-01"])
    store = LocalArtifactStore(root=str(tmp_path / "served"))
    in_april = _record("2013-04-10T12:00:00.000000Z", shifted(january.head(400)))
    partial = {**_record("2013-04-11T00:00:00Z", january.head(5)), "inputs": {"hour": [1, 2, 3, 4, 5]}}
    # A corrupt line and a torn last line (a write cut short) are skipped and counted, never fatal.
    _ship(store, "2013-04-10", [in_april, partial], tail=b"{not json\n" + json.dumps(in_april).encode()[:50])
    _ship(store, "2013-05-02", [_record("2013-05-02T00:00:00Z", january.head(300))])
    return {"store": store, "january": january}


def _served(resources: dict, traffic: dict, batch_fallback: bool) -> dict:
    return {**resources, "served": ServedPredictions(store=traffic["store"], batch_fallback=batch_fallback)}


def test_served_traffic_is_read_by_month_and_bad_records_are_counted(traffic):
    served = ServedPredictions(store=traffic["store"])
    log = served.read_month("2013-04")
    assert log.segments == 1 and log.corrupt == 2 and len(log.records) == 2
    rows = served_rows(log.records, *months.bounds("2013-04"))
    assert len(rows.frame) == 400 and rows.requests == 1 and rows.skipped == 1 and rows.model_versions == ["1"]
    assert list(rows.frame[ROW_KEY]) == list(traffic["january"][ROW_KEY].head(400))
    assert all(rows.frame[c].dtype == "float64" for c in NUMERIC_FEATURES)
    assert served.read_month("2013-06").records == ()


def test_drift_report_judges_served_traffic(monitored_resources, traffic, instance):
    # 2013-04's batch features are an unchanged training month; only the served rows are shifted.
    report = drift_report(_served(monitored_resources, traffic, False), instance, UNCHANGED)
    assert report["current_source"] == "served_traffic" and report["current_rows"] == 400
    assert report["corrupt_records"] == 2 and report["skipped_requests"] == 1
    assert report["served_model_versions"] == "1" and report["served_segments"] == 1
    assert report["drifted"] is True and SHIFTED_COLUMN in report["drifted_columns"]
    check = _served_check(instance, UNCHANGED)
    assert check.passed is True and "400 served rows" in check.description


def _served_check(instance, month: str) -> dg.AssetCheckEvaluation:
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("drift_report"), SERVED_CHECK), limit=10
    )
    (evaluation,) = [
        r.event.dagster_event.event_specific_data
        for r in records
        if r.event and r.event.dagster_event and r.event.dagster_event.event_specific_data.partition == month
    ][:1]
    return evaluation


@pytest.mark.parametrize("batch_fallback", [True, False])
def test_a_month_without_served_traffic_is_never_judged_silently(
    monitored_resources, traffic, instance, batch_fallback
):
    report = drift_report(_served(monitored_resources, traffic, batch_fallback), instance, SHIFTED_TOO)
    assert report["served_rows"] == 0 and "has 0 served rows" in report["no_production_data"]
    check = _served_check(instance, SHIFTED_TOO)
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
    if batch_fallback:  # the embedded default: the batch features stand in, and the check says so
        assert report["current_source"] == "validated_features" and report["drifted"] is True
        assert "batch features stood in" in report["no_production_data"]
    else:  # production: nothing is judged, and drift_sensor's skip reason names the month
        assert report["current_source"] == "none" and report["drifted"] is False and "columns" not in report
        with dg.build_sensor_context(instance=instance) as context:
            skipped = drift_sensor.evaluate_tick(context).skip_message
        assert f"no production data: {SHIFTED_TOO}" in skipped and "batch_fallback is off" in skipped


def _rows(report: dict) -> dict[str, dict]:
    return {r.data["column"]: r.data for r in report["columns"].records}


def test_drift_report_metadata_thresholds_and_html(monitored_resources, monitored_home, instance):
    report = drift_report(monitored_resources, instance, SHIFTED, column_thresholds={SHIFTED_COLUMN: 5.0})
    rows = _rows(report)
    assert set(rows) == {*FEATURES, detector.PREDICTION_COLUMN}
    # The override applies to its column only; every other column keeps its calibrated band.
    assert rows[SHIFTED_COLUMN]["threshold"] == 5.0 and rows[SHIFTED_COLUMN]["drifted"] is False
    assert rows[SHIFTED_COLUMN]["threshold_source"] == "override"
    assert rows[SHIFTED_COLUMN]["score"] == pytest.approx(3.0, abs=0.05)
    assert rows["hour"]["threshold"] == 0.2 and rows["hour"]["threshold_source"] == "floor"
    assert rows["temp"]["threshold_source"] == "calibrated" and rows["temp"]["threshold"] > 0.2
    assert rows["carrier"]["threshold"] >= 0.05 and rows["visib"]["method"] == "wasserstein"
    assert rows["visib"]["kind"] == "distance" and "blocks" in rows["visib"]["derivation"]
    assert sum(rows[c]["importance"] for c in FEATURES) == pytest.approx(1.0, abs=1e-3)
    # The per-column flags agree with Evidently's own drifted-columns count.
    flagged = [c for c in FEATURES if rows[c]["drifted"]]
    assert len(flagged) == report["drifted_count"] and report["drifted_share"] == len(flagged) / len(FEATURES)
    assert report["prediction_drifted"] is rows[detector.PREDICTION_COLUMN]["drifted"]
    # Silencing the column's test does not blind the month: the classifier still sees the shift.
    assert report["drifted"] is True and report["classifier_drifted"] is True
    assert report["classifier_auc"] > 0.95 and report["classifier_top_features"].startswith(SHIFTED_COLUMN)
    assert "domain classifier AUC" in report["drift_reasons"] and "| distance |" in report["classifier_importances"]

    html = monitored_home / "artifacts" / drift_html_key(SHIFTED)
    assert report["report"] == str(html) and html.stat().st_size > 100_000
    text = html.read_text(encoding="utf-8")
    assert "Dataset Drift" in text and all(column in text for column in FEATURES)
    assert report["report_url"].endswith("/artifactPath/drift_report.html")


@pytest.mark.parametrize(
    ("month", "column", "move", "score"),
    [
        ("2013-08", "distance", lambda f: scaled(f, "distance", 1.5), 0.70),
        ("2013-09", "hour", lambda f: f.assign(hour=f["hour"] + 3), 0.645),
    ],
    ids=["distance-x1.5", "hour-plus-3h"],
)
def test_a_large_single_feature_shift_drifts_end_to_end(monitored_resources, instance, month, column, move, score):
    store = monitored_resources["store"]
    store.write_frame(features_key(month), move(store.read_frame(features_key("2013-01"))))
    report = drift_report(monitored_resources, instance, month)
    row = _rows(report)[column]
    assert row["score"] == pytest.approx(score, abs=0.01) and row["threshold"] == 0.2 and row["drifted"] is True
    assert report["drifted"] is True and report["drifted_columns"] == column
    assert report["drift_reasons"].startswith(f"{column} wasserstein")
    assert report["classifier_drifted"] is True and column in report["classifier_top_features"]
    assert 0 <= row["importance"] <= 1 and report["champion_version"] and report["reference_months"] == "2013-01"


def test_drift_report_needs_a_champion(resources):
    with pytest.raises(dg.Failure, match="champion"):
        materialize(["drift_report"], resources, partition_key="2013-02")


def _live(resources, instance, month):
    result = materialize(["outcomes", "live_performance"], resources, instance=instance, partition_key=month)
    metadata = result.asset_materializations_for_node("live_performance")[0].metadata
    return {k: v.value for k, v in metadata.items()}


def test_live_performance_on_the_evaluation_month_matches_evaluation(monitored_resources, instance):
    # FAST_EVAL evaluates on 2013-03: the same rows, scored by the same ONNX file.
    assert materialize(["batch_predictions"], monitored_resources, instance=instance, partition_key="2013-03").success
    live = _live(monitored_resources, instance, "2013-03")
    assert live["auc"] == pytest.approx(live["eval_auc"], abs=1e-4)
    assert live["brier"] == pytest.approx(live["eval_brier"], abs=1e-4)
    assert live["degraded"] is False and "within margins" in live["reason"]
    assert 0 <= live["expected_calibration_error"] < 0.2 and "| score bin |" in live["calibration"]
    assert not tick_live(instance).run_requests


def tick_live(instance):
    with dg.build_sensor_context(instance=instance) as context:
        return live_performance_sensor.evaluate_tick(context)


def test_flipped_outcomes_degrade_live_performance_and_trigger_retraining(monitored_resources, instance):
    store = monitored_resources["store"]
    march = store.read_frame(features_key("2013-03"))
    store.write_frame(features_key("2013-07"), march.assign(**{TARGET: (1 - march[TARGET]).astype("int8")}))
    assert materialize(["batch_predictions"], monitored_resources, instance=instance, partition_key="2013-07").success

    live = _live(monitored_resources, instance, "2013-07")
    assert live["auc"] == pytest.approx(1 - live["eval_auc"], abs=0.02)
    assert live["degraded"] is True and live["auc_drop"] > live["auc_margin"]
    assert "AUC" in live["reason"] and "margin" in live["reason"]

    (request,) = tick_live(instance).run_requests
    assert request.tags["mlops/trigger"] == "live_performance_sensor"
    assert request.tags["mlops/partitions"] == "2013-07" and "AUC" in request.tags["mlops/reason"]
    assert request.run_config["ops"]["training_data"]["config"]["train_months"] == ["2013-05", "2013-06", "2013-07"]
