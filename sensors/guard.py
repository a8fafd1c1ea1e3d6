"""The one guard in front of retraining, shared by drift_sensor, live_performance_sensor and monthly_retraining.

- One retraining at a time: any `training_job` run in flight holds every trigger.
- One cooldown: the newest retraining (a `training_job` run that drift_sensor, live_performance_sensor
  or monthly_retraining launched, finished or in flight) starts it for all three; a canceled run does
  not count. A first training, by the demo or a person, is not a retraining and starts none.
- A verdict counts only when it is about the serving champion and about data the champion has not
  learnt from. Reports made against an older champion, and reports on months inside or before the
  champion's training window (a backfill after a retraining re-judges those), never trigger the next
  retraining.

The champion is read from the instance (the newest `champion_model` materialization), so the daemon
and an in-process evaluation see the same state: what the demo did, the daemon does not repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

TRAINING_JOB = "training_job"
RETRAINING_TAG = "mlops/retraining"  # on every training_job run; the run queue allows one at a time
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
COUNTED = [*IN_FLIGHT, dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]
RETRAINING_TRIGGERS = ["drift_sensor", "live_performance_sensor", "monthly_retraining"]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def held_by_runs(instance: dg.DagsterInstance, cooldown_seconds: float, now: float) -> str | None:
    """Why no retraining may start now because of runs already in the instance, or None."""
    running = instance.get_runs(filters=dg.RunsFilter(job_name=TRAINING_JOB, statuses=IN_FLIGHT), limit=1)
    if running:
        run = running[0]
        trigger = run.tags.get("mlops/trigger", "a person")
        return f"{TRAINING_JOB} run {run.run_id} (from {trigger}) is {run.status.value}: held until it finishes"
    retrainings = dg.RunsFilter(job_name=TRAINING_JOB, statuses=COUNTED, tags={"mlops/trigger": RETRAINING_TRIGGERS})
    records = instance.get_run_records(filters=retrainings, limit=1)
    if records:
        created = records[0].create_timestamp.timestamp()
        if now - created < cooldown_seconds:
            run = records[0].dagster_run
            trigger = run.tags.get("mlops/trigger", "a person")
            return (
                f"the last {TRAINING_JOB} run {run.run_id} (from {trigger}) started at {iso(created)} "
                f"(cooldown {cooldown_seconds:g} s): held until {iso(created + cooldown_seconds)}"
            )
    return None


@dataclass(frozen=True)
class ServingChampion:
    version: str
    train_months: tuple[str, ...]


def serving_champion(instance: dg.DagsterInstance) -> ServingChampion | None:
    """The champion as the newest champion_model materialization records it, or None before the first."""
    records = instance.fetch_materializations(dg.AssetKey("champion_model"), limit=1).records
    if not records:
        return None
    metadata = records[0].asset_materialization.metadata
    version = metadata.get("version")
    if version is None or version.value is None:
        return None
    months = metadata.get("train_months")
    return ServingChampion(str(version.value), tuple(m for m in (months.value if months else "").split(",") if m))


def stale(champion: ServingChampion | None, partition: str, judged_version: str | None) -> str | None:
    """Why a verdict on `partition` about `judged_version` must not trigger retraining, or None."""
    if champion is None:
        return None
    if judged_version is not None and judged_version != champion.version:
        return f"judged v{judged_version}, not the champion v{champion.version}"
    if champion.train_months and partition <= max(champion.train_months):
        return f"inside or before champion v{champion.version}'s training months (to {max(champion.train_months)})"
    return None
