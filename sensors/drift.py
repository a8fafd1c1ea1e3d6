"""drift_sensor and its twin live_performance_sensor: a monitoring verdict in, a retraining run out.

Both read the instance's event log rather than using `asset_sensor`, which sees only the latest
materialization: a backfill that lands five drifted months between two ticks must count as five.
The cursor holds the last storage id read, the time of this sensor's last request and the
partitions that want retraining but have not got it yet (held during a cooldown or while a
training run is in flight), so no verdict is lost and none triggers twice. What every trigger of
retraining shares (one run at a time, one cooldown, which verdicts count) is in sensors/guard.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import dagster as dg

from mlops_assets.months import DEFAULT_WINDOW_MONTHS, retraining_window
from sensors.guard import held_by_runs, iso, serving_champion, stale
from sensors.jobs import training_job
from sensors.retraining import DEFAULT_COOLDOWN_SECONDS, retraining_run_config

PAGE = 100

# Reads one materialization's metadata; returns why that partition needs retraining, or None.
Trigger = Callable[[Mapping[str, dg.MetadataValue]], str | None]


@dataclass
class RetrainingCursor:
    storage_id: int = 0
    """Last event-log storage id read; later materializations are new."""
    last_request_at: float | None = None
    """Unix time of the last run request, for the cooldown."""
    pending: dict[str, str] = field(default_factory=dict)
    """Partition -> reason, for verdicts that want retraining and have not had it yet."""

    @classmethod
    def load(cls, raw: str | None) -> RetrainingCursor:
        if not raw:
            return cls()
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _value(metadata: Mapping[str, dg.MetadataValue], key: str, default=None):
    entry = metadata.get(key)
    return default if entry is None else entry.value


def drift_trigger(metadata: Mapping[str, dg.MetadataValue]) -> str | None:
    if not _value(metadata, "drifted", False):
        return None
    columns = _value(metadata, "drifted_columns") or "no feature column"
    prediction = " + prediction" if _value(metadata, "prediction_drifted", False) else ""
    return f"drift in {columns}{prediction} (share {_value(metadata, 'drifted_share', 0):.2f})"


def live_performance_trigger(metadata: Mapping[str, dg.MetadataValue]) -> str | None:
    return _value(metadata, "reason", "performance dropped") if _value(metadata, "degraded", False) else None


def _new_records(instance: dg.DagsterInstance, asset_key: dg.AssetKey, after: int) -> list:
    records, page_cursor = [], None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, after_storage_id=after),
            limit=PAGE,
            cursor=page_cursor,
            ascending=True,
        )
        records.extend(page.records)
        if not page.has_more:
            return records
        page_cursor = page.cursor


def build_retraining_sensor(
    *,
    name: str,
    asset_key: dg.AssetKey,
    trigger: Trigger,
    version_key: str,
    description: str,
    cooldown_seconds: float = DEFAULT_COOLDOWN_SECONDS,
    window_months: int = DEFAULT_WINDOW_MONTHS,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    job: dg.UnresolvedAssetJobDefinition = training_job,
) -> dg.SensorDefinition:
    """A sensor that requests `job` over a retraining window when `trigger` finds a reason in new
    materializations; `version_key` names the metadata entry saying which model version was judged."""

    @dg.sensor(
        name=name,
        job=job,
        description=description,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        state = RetrainingCursor.load(context.cursor)
        records = _new_records(context.instance, asset_key, state.storage_id)
        champion = serving_champion(context.instance)
        seen, ignored, unjudged = [], {}, {}
        for record in records:
            partition = record.partition_key or "(unpartitioned)"
            metadata = record.asset_materialization.metadata
            reason = trigger(metadata)
            seen.append(partition)
            # A month judged on no production data (or on batch data standing in) is named in every skip.
            if _value(metadata, "no_production_data"):
                unjudged[partition] = _value(metadata, "no_production_data")
            state.storage_id = max(state.storage_id, record.storage_id)
            # The newest verdict for a partition wins: a month re-measured as fine stops waiting.
            if reason is None:
                state.pending.pop(partition, None)
                continue
            judged = _value(metadata, version_key)
            why_not = stale(champion, partition, None if judged is None else str(judged))
            if why_not is None:
                state.pending[partition] = reason
            else:
                state.pending.pop(partition, None)
                ignored[partition] = why_not

        def skip(reason: str) -> dg.SensorResult:
            if unjudged:
                reason += "; no production data: " + "; ".join(f"{p} ({why})" for p, why in sorted(unjudged.items()))
            if ignored:
                reason += "; ignored: " + "; ".join(f"{p} ({why})" for p, why in sorted(ignored.items()))
            return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=state.dump())

        if not state.pending:
            if not records:
                return skip(f"no new {asset_key.to_user_string()} materializations since storage id {state.storage_id}")
            return skip(
                f"{len(records)} new {asset_key.to_user_string()} materialization(s) "
                f"({', '.join(sorted(set(seen)))}), none calls for retraining"
            )

        partitions = sorted(state.pending)
        now = time.time()
        if state.last_request_at is not None and now - state.last_request_at < cooldown_seconds:
            return skip(
                f"{', '.join(partitions)} call(s) for retraining, but this sensor requested a run at "
                f"{iso(state.last_request_at)} (cooldown {cooldown_seconds:g} s): held until "
                f"{iso(state.last_request_at + cooldown_seconds)}"
            )
        held = held_by_runs(context.instance, cooldown_seconds, now)
        if held is not None:
            return skip(f"{', '.join(partitions)} call(s) for retraining, but {held}")

        newest = partitions[-1]
        window = retraining_window(newest, window_months)
        if window is None:
            # Retraining can never cover these months (too little history before them): drop them, say so.
            state.pending.clear()
            return skip(f"cannot retrain for {', '.join(partitions)}: fewer than three months of data up to {newest}")

        reasons = "; ".join(f"{p}: {state.pending[p]}" for p in partitions)
        request = dg.RunRequest(
            run_key=f"{name}-{state.storage_id}",
            run_config=retraining_run_config(window),
            tags={
                "mlops/trigger": name,
                "mlops/partitions": ",".join(partitions),
                "mlops/window": window.describe(),
                "mlops/reason": reasons[:1000],
            },
        )
        context.log.info(f"{name}: requesting {job.name} ({window.describe()}) because {reasons}")
        state.pending.clear()
        state.last_request_at = now
        return dg.SensorResult(run_requests=[request], cursor=state.dump())

    return _sensor


def build_drift_sensor(**overrides) -> dg.SensorDefinition:
    return build_retraining_sensor(
        **{
            "name": "drift_sensor",
            "asset_key": dg.AssetKey("drift_report"),
            "trigger": drift_trigger,
            "version_key": "champion_version",
            "description": "Retrains when a drift_report finds the month drifted from the champion's training data.",
            **overrides,
        }
    )


def build_live_performance_sensor(**overrides) -> dg.SensorDefinition:
    return build_retraining_sensor(
        **{
            "name": "live_performance_sensor",
            "asset_key": dg.AssetKey("live_performance"),
            "trigger": live_performance_trigger,
            "version_key": "model_version",
            "description": "Retrains when live_performance finds AUC or Brier score past their margins.",
            **overrides,
        }
    )


drift_sensor = build_drift_sensor()
live_performance_sensor = build_live_performance_sensor()
