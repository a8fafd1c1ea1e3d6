"""served_traffic_sensor: newly shipped prediction-log segments bring their month's monitoring up to date.

Servers ship each closed segment under the month it belongs to (resources.ServedPredictions), and
every drift_report records how many segments it read. A month that now holds a different number
has traffic no report has judged (several workers ship out of name order, so counting is what is
safe): its drift_report (and live_performance, once the month has outcomes) is requested, with the
count as the run key, so the same segments never cause two runs. No cursor: after `make demo` has
judged its replayed traffic, the daemon's first tick finds nothing new rather than repeating the demo.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.partitions import monthly_partitions
from resources import ServedPredictions
from sensors.jobs import monitoring_job

DRIFT_REPORT, OUTCOMES, LIVE_PERFORMANCE = (
    dg.AssetKey(name) for name in ("drift_report", "outcomes", "live_performance")
)


def _latest(instance: dg.DagsterInstance, asset_key: dg.AssetKey, month: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[month]), limit=1
    ).records
    return records[0].asset_materialization if records else None


def _segments_judged(instance: dg.DagsterInstance, month: str) -> int:
    report = _latest(instance, DRIFT_REPORT, month)
    entry = report.metadata.get("served_segments") if report else None
    return int(entry.value) if entry is not None and entry.value is not None else 0


@dg.sensor(
    name="served_traffic_sensor",
    job=monitoring_job,
    minimum_interval_seconds=300,  # segments close every 300 s by default (mlops-serve --log-max-age-s)
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-judges a month's drift_report (and live_performance, once its outcomes exist) when servers "
    "ship traffic for it that no report has read yet.",
)
def served_traffic_sensor(context: dg.SensorEvaluationContext, served: ServedPredictions) -> dg.SensorResult:
    requests, found = [], []
    for month in monthly_partitions.get_partition_keys():
        segments, judged = len(served.segments(month)), _segments_judged(context.instance, month)
        if segments == judged:
            continue
        with_outcomes = _latest(context.instance, OUTCOMES, month) is not None
        found.append(f"{month} ({segments} segments, {judged} judged)")
        requests.append(
            dg.RunRequest(
                run_key=f"served:{month}:{segments}",
                partition_key=month,
                asset_selection=[DRIFT_REPORT, *([LIVE_PERFORMANCE] if with_outcomes else [])],
                tags={"mlops/trigger": "served_traffic_sensor", "mlops/segments": str(segments)},
            )
        )
    if not requests:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"every segment in {served.location()} has been judged"))
    context.log.info(f"served traffic no report has read: {', '.join(found)}")
    return dg.SensorResult(run_requests=requests)
