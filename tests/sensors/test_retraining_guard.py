"""One guard for every trigger of retraining: one run at a time, one cooldown, and only verdicts about
the serving champion and data it has not learnt from count. Evaluated on a real instance."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import dagster as dg

from mlops_assets.definitions import defs
from sensors.drift import build_drift_sensor, drift_sensor, live_performance_sensor
from sensors.schedules import build_monthly_retraining_schedule
from tests.sensors.support import report_drift

TICK_TIME = datetime(2014, 1, 1, 4, tzinfo=UTC)  # the schedule's window ends with 2013-12


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None = None):
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        return sensor.evaluate_tick(context)


def schedule_tick(schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance):
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=TICK_TIME) as context:
        return schedule.evaluate_tick(context)


def training_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, trigger: str) -> dg.DagsterRun:
    run = dg.DagsterRun(
        job_name="training_job", run_id=str(uuid.uuid4()), status=status, tags={"mlops/trigger": trigger}
    )
    instance.add_run(run)
    return run


def champion(instance: dg.DagsterInstance, version: str, train_months: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization("champion_model", metadata={"version": version, "train_months": train_months})
    )


def degraded(instance: dg.DagsterInstance, month: str, version: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "live_performance",
            partition=month,
            metadata={"degraded": True, "reason": "AUC 0.31", "model_version": version},
        )
    )


def test_a_retraining_in_flight_holds_every_trigger(instance):
    running = training_run(instance, dg.DagsterRunStatus.STARTED, "monthly_retraining")
    report_drift(instance, "2013-11", drifted=True)
    degraded(instance, "2013-11", "1")
    schedule = build_monthly_retraining_schedule()
    for result in (
        tick(drift_sensor, instance),
        tick(live_performance_sensor, instance),
        schedule_tick(schedule, instance),
    ):
        assert not result.run_requests
        assert running.run_id in result.skip_message and "from monthly_retraining" in result.skip_message


def test_one_cooldown_whoever_retrained_last(instance):
    finished = training_run(instance, dg.DagsterRunStatus.SUCCESS, "live_performance_sensor")
    report_drift(instance, "2013-11", drifted=True)
    held = tick(drift_sensor, instance)
    assert not held.run_requests
    assert finished.run_id in held.skip_message and "cooldown" in held.skip_message
    assert (
        "retraining for 2013-12 not started"
        in schedule_tick(build_monthly_retraining_schedule(), instance).skip_message
    )
    # Without a cooldown the same evidence asks for a run; a canceled run never holds anything.
    assert len(tick(build_drift_sensor(cooldown_seconds=0), instance).run_requests) == 1
    instance.report_run_canceled(training_run(instance, dg.DagsterRunStatus.STARTED, "a person"))
    assert len(schedule_tick(build_monthly_retraining_schedule(cooldown_seconds=0), instance).run_requests) == 1


def test_only_verdicts_about_the_champion_on_new_data_count(instance):
    champion(instance, "2", "2013-08,2013-09,2013-10")
    report_drift(instance, "2013-09", drifted=True)  # inside the champion's training window
    degraded(instance, "2013-07", "2")  # before it: a backfill after retraining re-judges old months
    degraded(instance, "2013-11", "1")  # about the model the champion replaced
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "drift_report",
            partition="2013-12",
            metadata={"drifted": True, "drifted_share": 0.2, "champion_version": "1"},
        )
    )
    drift = tick(drift_sensor, instance)
    live = tick(live_performance_sensor, instance)
    assert not drift.run_requests and not live.run_requests
    assert "2013-09 (inside or before champion v2's training months (to 2013-10))" in drift.skip_message
    assert "2013-12 (judged v1, not the champion v2)" in drift.skip_message
    assert "2013-07 (inside or before" in live.skip_message and "2013-11 (judged v1" in live.skip_message

    degraded(instance, "2013-11", "2")  # the champion itself, on a month it has never seen
    request = tick(live_performance_sensor, instance, live.cursor).run_requests[0]
    assert request.tags["mlops/partitions"] == "2013-11"


def test_training_runs_carry_the_tag_the_run_queue_limits():
    job = defs().resolve_job_def("training_job")
    assert job.tags["mlops/retraining"] == "true"
    assert {j.name for j in defs().resolve_all_job_defs()} >= {
        "features_job", "training_job", "batch_inference_job", "monitoring_job"
    }  # fmt: skip


def test_a_first_training_is_not_a_retraining_and_starts_no_cooldown(instance):
    training_run(instance, dg.DagsterRunStatus.SUCCESS, "demo")
    report_drift(instance, "2013-11", drifted=True)
    assert len(tick(drift_sensor, instance).run_requests) == 1
