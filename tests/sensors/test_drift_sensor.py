import json
import uuid
from datetime import UTC, datetime

import dagster as dg
import pytest

from mlops_assets.definitions import defs
from mlops_assets.months import retraining_window
from sensors.drift import DEFAULT_COOLDOWN_SECONDS, RetrainingCursor, drift_sensor, live_performance_sensor
from tests.sensors.support import SHIFTED, SHIFTED_COLUMN, SHIFTED_TOO, UNCHANGED, drift_report, report_drift


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None):
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        return sensor.evaluate_tick(context)


def months_of(request: dg.RunRequest) -> dict:
    ops = request.run_config["ops"]
    return {
        "train": ops["training_data"]["config"]["train_months"],
        "validation": ops["training_data"]["config"]["validation_month"],
        "evaluation": ops["evaluation_report"]["config"]["evaluation_month"],
    }


def test_shifted_copy_triggers_unchanged_does_not_and_both_partitions_between_ticks_are_seen(
    monitored_resources, instance
):
    first = tick(drift_sensor, instance, None)
    assert not first.run_requests and "no new drift_report" in first.skip_message

    unchanged = drift_report(monitored_resources, instance, UNCHANGED)
    assert unchanged["drifted"] is False and unchanged["drifted_share"] == 0.0
    assert unchanged["reference_months"] == "2013-01" and unchanged["current_source"] == "validated_features"
    second = tick(drift_sensor, instance, first.cursor)
    assert not second.run_requests
    assert f"({UNCHANGED}), none calls for retraining" in second.skip_message

    # Two drifted months land before the next tick; an asset_sensor would see only the last.
    for month in (SHIFTED, SHIFTED_TOO):
        report = drift_report(monitored_resources, instance, month)
        assert report["drifted"] is True and SHIFTED_COLUMN in report["drifted_columns"].split(", ")
        row = next(r for r in report["columns"].records if r.data["column"] == SHIFTED_COLUMN)
        assert row.data["score"] == pytest.approx(3.0, abs=0.05)  # normed Wasserstein of a 3-sigma shift
    third = tick(drift_sensor, instance, second.cursor)
    assert len(third.run_requests) == 1
    request = third.run_requests[0]
    assert request.tags["mlops/partitions"] == f"{SHIFTED},{SHIFTED_TOO}"
    assert request.tags["mlops/trigger"] == "drift_sensor" and SHIFTED_COLUMN in request.tags["mlops/reason"]
    assert months_of(request) == {
        "train": ["2013-04", "2013-05", "2013-06"],
        "validation": "2013-03",
        "evaluation": "2013-02",
    }
    dg.validate_run_config(defs().resolve_job_def("training_job"), request.run_config)

    # Each report triggers at most once: the same events never ask again.
    fourth = tick(drift_sensor, instance, third.cursor)
    assert not fourth.run_requests and "no new drift_report" in fourth.skip_message


def test_cooldown_holds_drift_until_it_ends_and_cursor_survives_ticks(instance):
    report_drift(instance, "2013-08", drifted=True)
    first = tick(drift_sensor, instance, None)
    assert [r.tags["mlops/partitions"] for r in first.run_requests] == ["2013-08"]
    # Re-evaluating the same tick (a daemon retry) asks for the same run key, so Dagster launches once.
    assert tick(drift_sensor, instance, None).run_requests[0].run_key == first.run_requests[0].run_key

    report_drift(instance, "2013-09", drifted=True)
    report_drift(instance, "2013-10", drifted=True)
    held = tick(drift_sensor, instance, first.cursor)
    assert not held.run_requests
    assert "2013-09, 2013-10 call(s) for retraining" in held.skip_message and "cooldown" in held.skip_message
    assert sorted(json.loads(held.cursor)["pending"]) == ["2013-09", "2013-10"]

    still = tick(drift_sensor, instance, held.cursor)
    assert not still.run_requests and "cooldown" in still.skip_message

    # A re-measure that finds 2013-10 fine withdraws it; the cooldown then runs out.
    report_drift(instance, "2013-10", drifted=False)
    state = RetrainingCursor.load(still.cursor)
    state.last_request_at -= DEFAULT_COOLDOWN_SECONDS + 1
    after = tick(drift_sensor, instance, state.dump())
    assert [r.tags["mlops/partitions"] for r in after.run_requests] == ["2013-09"]
    assert months_of(after.run_requests[0])["train"] == ["2013-07", "2013-08", "2013-09"]
    assert after.run_requests[0].run_key != first.run_requests[0].run_key
    assert json.loads(after.cursor)["pending"] == {}


def test_in_flight_training_run_holds_the_request(instance):
    running = dg.DagsterRun(job_name="training_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
    instance.add_run(running)
    report_drift(instance, "2013-07", drifted=True)
    held = tick(drift_sensor, instance, None)
    assert not held.run_requests and running.run_id in held.skip_message
    assert json.loads(held.cursor)["pending"] == {"2013-07": "drift in temp (share 0.10)"}

    instance.report_run_canceled(running)
    assert len(tick(drift_sensor, instance, held.cursor).run_requests) == 1


def test_drift_too_early_for_a_window_is_dropped_with_a_reason(instance):
    report_drift(instance, "2013-02", drifted=True)
    result = tick(drift_sensor, instance, None)
    assert not result.run_requests and "cannot retrain for 2013-02" in result.skip_message
    assert json.loads(result.cursor)["pending"] == {}


def test_live_performance_sensor_reads_its_own_asset(instance):
    report_drift(instance, "2013-07", drifted=True)  # a drift verdict is not the twin's business
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="live_performance", partition="2013-11", metadata={"degraded": True, "reason": "AUC 0.31"}
        )
    )
    result = tick(live_performance_sensor, instance, None)
    request = result.run_requests[0]
    assert request.tags["mlops/partitions"] == "2013-11" and request.tags["mlops/reason"] == "2013-11: AUC 0.31"
    assert months_of(request)["train"] == ["2013-09", "2013-10", "2013-11"]


@pytest.mark.parametrize(
    ("tick_time", "window"),
    [
        (datetime(2013, 12, 1, 4, tzinfo=UTC), (["2013-09", "2013-10", "2013-11"], "2013-08", "2013-07")),
        (datetime(2014, 1, 1, 4, tzinfo=UTC), (["2013-10", "2013-11", "2013-12"], "2013-09", "2013-08")),
        (datetime(2013, 5, 1, 4, tzinfo=UTC), (["2013-03", "2013-04"], "2013-02", "2013-01")),
        (datetime(2013, 3, 1, 4, tzinfo=UTC), None),  # Jan + Feb only: no room for validation and evaluation
        (datetime(2026, 11, 1, 4, tzinfo=UTC), None),  # past the shipped data
    ],
)
def test_monthly_schedule_requests_the_trailing_window_ending_last_month(instance, tick_time, window):
    schedule = defs().resolve_schedule_def("monthly_retraining")
    assert schedule.cron_schedule == "0 4 1 * *" and schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick_time) as context:
        result = schedule.evaluate_tick(context)
    if window is None:
        assert not result.run_requests and "no retraining window" in result.skip_message
        return
    (request,) = result.run_requests
    assert (lambda m: (m["train"], m["validation"], m["evaluation"]))(months_of(request)) == window
    assert request.tags["mlops/partitions"] == window[0][-1]
    dg.validate_run_config(defs().resolve_job_def("training_job"), request.run_config)


def test_window_rule_and_definitions():
    assert retraining_window("2013-12", months=1).train_months == ["2013-12"]
    assert retraining_window("2013-12", months=5).evaluation_month == "2013-06"
    definitions = defs()
    for name in ("drift_sensor", "live_performance_sensor"):
        sensor = definitions.resolve_sensor_def(name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert sensor.job_name == "training_job"
    selected = {
        key.to_user_string() for key in definitions.resolve_job_def("training_job").asset_layer.executable_asset_keys
    }
    assert {"trained_model", "onnx_model", "evaluation_report", "registered_model", "champion_model"} <= selected
    assert not selected & {"batch_predictions", "drift_report", "live_performance"}
