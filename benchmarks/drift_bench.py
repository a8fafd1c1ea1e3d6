"""Drift monitoring figures: drift report -> run request latency, and one drift report's wall time per month.

`python -m benchmarks.drift_bench` builds a throwaway home (validated features for 2013, a small
champion trained on 2013-01..03), then measures on a temporary Dagster instance:

(a) report_to_request: from the drift_report materialization event to drift_sensor's RunRequest,
    with the sensor evaluated right after the report lands, so the figure is the sensor's own cost
    (event-log read, window, request). Under the daemon add up to the sensor's
    minimum_interval_seconds of waiting for the next tick. Also timed with a longer event log, to
    show a tick reads only what is new;
(b) drift_report per month: wall time of materializing one month's report (Dagster run, feature and
    reference reads, champion scoring, Evidently, HTML), and the asset's own elapsed_s;
(c) served traffic: a real mlops-serve on loopback answers 100k rows replayed through tritonclient;
    from the moment its last segment has shipped (the server stopped), the time until a drift_report
    that includes it has materialized (served_traffic_sensor tick + the run it requests; under the
    daemon add up to the sensor's 300 s interval), and that report's wall time per 100k served rows;
(d) the detector's hit rate and false-alarm rate on the shifts the tests use: every numeric feature
    moved by one reference standard deviation or scaled by 1.5 in each month of the champion's
    window (hits), the unchanged months (false alarms), and two swapped category labels (classifier).

Results go to benchmarks/results/drift.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import dagster as dg
import numpy as np
import pandas as pd

from benchmarks.common import fresh_home, write_result
from deploy.local import demo_traffic, runs
from mlops_assets.definitions import defs
from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import NUMERIC_FEATURES
from mlops_assets.monitoring import bands, detector, domain_classifier, stattests
from mlops_assets.partitions import monthly_partitions
from resources import local_resources
from sensors.drift import RetrainingCursor, drift_sensor
from sensors.jobs import TRAINING_SELECTION
from sensors.served import served_traffic_sensor

SERVED_ROWS = 100_000
WINDOW = ["2013-01", "2013-02", "2013-03"]  # the champion's training months (CHAMPION_CONFIG's default window)

CHAMPION_CONFIG = {
    "trained_model": {"epochs": 2, "hidden": [64, 32]},  # the default window 2013-01..03, a smaller network
    "evaluation_report": {"latency_runs": 30},
}


def _materialize(resources, instance, selection, ops=None, **kwargs) -> dg.ExecuteInProcessResult:
    return runs.materialize(selection, resources=resources, instance=instance, ops=ops, **kwargs)


def _tick(instance, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        return drift_sensor.evaluate_tick(context)


def _latest_storage_id(instance) -> int:
    return instance.fetch_materializations(dg.AssetKey("drift_report"), limit=1).records[0].storage_id


def _report_to_request(instance, resources, month: str) -> dict:
    """Materialize a drifted month, then tick the sensor from just before it: the request's latency."""
    cursor = RetrainingCursor(storage_id=_latest_storage_id(instance)).dump()
    result = _materialize(resources, instance, ["drift_report"], partition_key=month)
    assert result.asset_materializations_for_node("drift_report")[0].metadata["drifted"].value, month
    event = instance.fetch_materializations(dg.AssetKey("drift_report"), limit=1).records[0]
    started = time.perf_counter()
    tick = _tick(instance, cursor)
    tick_s = time.perf_counter() - started
    assert tick.run_requests, tick.skip_message
    return {"month": month, "tick_s": tick_s, "event_to_request_s": time.time() - event.timestamp}


def _served_traffic(home, instance, resources, month: str) -> dict:
    """(c): 100k rows of `month` served, shipped, and judged through the sensor and the run it requests."""
    frame = load_features(resources["store"], [month])
    frame = pd.concat([frame] * (SERVED_ROWS // len(frame) + 1), ignore_index=True).head(SERVED_ROWS)
    server, url = demo_traffic.start_server(home, home / "bench-serve.log")
    try:
        started = time.perf_counter()
        requests, failed = demo_traffic.replay(url, frame, resources["registry"].model_name, rows_per_request=100)
        replay_s = time.perf_counter() - started
    finally:
        demo_traffic.stop_server(server)  # closes the last segment and ships it before it exits
    shipped = time.perf_counter()
    with dg.build_sensor_context(instance=instance, resources=resources, definitions=defs()) as context:
        (request,) = served_traffic_sensor.evaluate_tick(context).run_requests
    ticked = time.perf_counter()
    result = _materialize(resources, instance, ["drift_report"], partition_key=request.partition_key)
    done = time.perf_counter()
    metadata = result.asset_materializations_for_node("drift_report")[0].metadata
    rows = metadata["served_rows"].value
    assert metadata["current_source"].value == "served_traffic" and failed == 0, (metadata, failed)
    return {
        "month": month,
        "served_rows": rows,
        "requests": requests,
        "replay_s": round(replay_s, 3),
        "segments": metadata["served_segments"].value,
        "shipped_to_report_s": round(done - shipped, 3),
        "sensor_tick_s": round(ticked - shipped, 3),
        "daemon_wait_s_max": served_traffic_sensor.minimum_interval_seconds,
        "drift_report_wall_s": round(done - ticked, 3),
        "drift_report_wall_s_per_100k_rows": round((done - ticked) * 100_000 / rows, 3),
        "drifted": metadata["drifted"].value,
    }


def _detector_rates(resources) -> dict:
    """(d): hits on one-sd shifts and 1.5x scalings, false alarms on unchanged months, category swaps."""
    frames = {m: load_features(resources["store"], [m]) for m in WINDOW}
    reference = pd.concat(frames.values(), ignore_index=True)
    thresholds = bands.calibrate(reference, bands.Calibration())

    def drifts(column: str, current: pd.DataFrame) -> bool:
        band = thresholds[column]
        score = stattests.column_score(band.method, column, reference[column], current[column])
        return stattests.is_drifted(band.method, score, band.threshold)

    misses, cases = [], 0
    for column in NUMERIC_FEATURES:
        for kind in ("shift", "scale"):
            for month, frame in frames.items():
                moved = frame[column] + reference[column].std() if kind == "shift" else frame[column] * 1.5
                cases += 1
                if not drifts(column, frame.assign(**{column: moved})):
                    misses.append(f"{column} {kind} {month}")
    false_alarms = [m for m, frame in frames.items() if detector.compute_drift(reference, frame).drifted]
    swaps = []
    for column, a, b in (("carrier", "UA", "B6"), ("origin", "EWR", "JFK")):
        values = frames["2013-02"][column].astype(str)
        swapped = frames["2013-02"].assign(**{column: np.where(values == a, b, np.where(values == b, a, values))})
        swaps.append(
            domain_classifier.domain_classifier(reference, swapped, domain_classifier.DomainClassifier()).drifted
        )
    return {
        "single_feature_shift_hit_rate": round(1 - len(misses) / cases, 4),
        "single_feature_shift_cases": cases,
        "single_feature_shift_misses": misses,
        "unchanged_month_false_alarm_rate": round(len(false_alarms) / len(frames), 4),
        "unchanged_month_false_alarms": false_alarms,
        "category_swap_hit_rate": round(sum(swaps) / len(swaps), 4),
    }


def main() -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the throwaway home's SQLite, never a developer's server
    home = fresh_home()  # its MLOPS_HOME also holds drift_report's default prediction log folder: empty
    figures: dict = {"home": str(home), "load_average_at_start": os.getloadavg()[0]}
    instance = dg.DagsterInstance.get()
    resources = local_resources(home)
    months = monthly_partitions.get_partition_keys()
    print(f"setup: validated features for {months[0]}..{months[-1]} and a small champion", flush=True)
    for month in months:
        assert _materialize(resources, instance, ["raw_flights", "validated_features"], partition_key=month).success
    assert _materialize(resources, instance, TRAINING_SELECTION, ops=CHAMPION_CONFIG).success

    # (b) one drift report per month (the first pays for importing Evidently, about 4 s: kept apart).
    per_month = []
    for month in months:
        started = time.perf_counter()
        result = _materialize(resources, instance, ["drift_report"], partition_key=month)
        wall = time.perf_counter() - started
        metadata = result.asset_materializations_for_node("drift_report")[0].metadata
        per_month.append(
            {
                "month": month,
                "wall_s": round(wall, 3),
                "asset_elapsed_s": metadata["elapsed_s"].value,
                "current_rows": metadata["current_rows"].value,
                "reference_rows": metadata["reference_rows"].value,
                "drifted": metadata["drifted"].value,
                "drifted_columns": metadata["drifted_columns"].value,
            }
        )
        print(f"  drift_report {month}: {wall:.2f} s, drifted={metadata['drifted'].value}", flush=True)
    warm = [m["wall_s"] for m in per_month[1:]]
    figures["drift_report_per_month"] = per_month
    figures["drift_report_wall_s_median"] = round(statistics.median(warm), 3)
    figures["drift_report_wall_s_max"] = round(max(warm), 3)
    figures["drift_report_wall_s_first_incl_import"] = per_month[0]["wall_s"]
    figures["drifted_months_default_thresholds"] = [m["month"] for m in per_month if m["drifted"]]

    # (a) drift report -> run request, on a short and on a longer event log.
    drifted = figures["drifted_months_default_thresholds"]
    short = [_report_to_request(instance, resources, month) for month in drifted[-3:]]
    for i in range(500):  # older reports already behind the cursor: a tick must not pay for them
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="drift_report", partition=months[i % 12], metadata={"drifted": False})
        )
    long = [_report_to_request(instance, resources, month) for month in drifted[-3:]]
    figures["report_to_request"] = {
        "tick_s_median": round(statistics.median(s["tick_s"] for s in short), 4),
        "event_to_request_s_median": round(statistics.median(s["event_to_request_s"] for s in short), 4),
        "tick_s_median_after_500_older_events": round(statistics.median(s["tick_s"] for s in long), 4),
        "daemon_wait_s_max": drift_sensor.minimum_interval_seconds,
        "samples": short + long,
    }
    figures["served_traffic"] = _served_traffic(home, instance, resources, months[-1])
    print(f"  served traffic: {figures['served_traffic']}", flush=True)
    figures["detector"] = _detector_rates(resources)
    print(f"  detector: {figures['detector']}", flush=True)
    write_result("drift", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
