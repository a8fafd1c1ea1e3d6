"""Drift monitoring figures: drift report -> run request latency, and one drift report's wall time per month.

`python -m benchmarks.drift_bench` builds a throwaway home (validated features for 2013, a small
champion trained on 2013-01..03), then measures on a temporary Dagster instance:

(a) report_to_request: from the drift_report materialization event to drift_sensor's RunRequest,
    with the sensor evaluated right after the report lands, so the figure is the sensor's own cost
    (event-log read, window, request). Under the daemon add up to the sensor's
    minimum_interval_seconds of waiting for the next tick. Also timed with a longer event log, to
    show a tick reads only what is new;
(b) drift_report per month: wall time of materializing one month's report (Dagster run, feature and
    reference reads, champion scoring, Evidently, HTML), and the asset's own elapsed_s.

Results go to benchmarks/results/drift.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import dagster as dg

from benchmarks.common import fresh_home, write_result
from mlops_assets import runs
from mlops_assets.partitions import monthly_partitions
from resources import local_resources
from sensors.drift import RetrainingCursor, drift_sensor
from sensors.jobs import TRAINING_SELECTION

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
    write_result("drift", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
