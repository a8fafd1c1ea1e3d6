"""The whole loop on one embedded instance: drift -> drift_sensor -> retraining run -> promotion decision."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from deploy.local.demo_monitoring import run_monitoring_loop
from mlops_assets import onnx_metrics
from mlops_assets.definitions import defs
from mlops_assets.features.assets import features_key
from resources.mlflow_registry import CHAMPION
from sensors.served import served_traffic_sensor
from tests.conftest import materialize, training_ops
from tests.sensors.support import CHAIN, SHIFTED, SHIFTED_COLUMN, UNCHANGED, add_synthetic_months, ship_served


@pytest.mark.slow
def test_drift_triggers_a_retraining_run_that_reaches_a_promotion_decision(home, resources, monkeypatch):
    # drift_report's default log folder is under $MLOPS_HOME: keep it inside this test's home.
    monkeypatch.setenv("MLOPS_HOME", str(home))
    add_synthetic_months(home)
    registry = resources["registry"]
    with dg.instance_for_test() as instance:
        assert materialize(CHAIN, resources, ops=training_ops(), instance=instance).success
        first = str(registry.version_by_alias(CHAMPION).version)
        # The tests' small settings, minus the months: those are the sensor's to choose.
        fast = {op: {k: v for k, v in cfg.items() if "month" not in k} for op, cfg in training_ops().items()}

        # The shifted month reaches the monitors as served traffic, as the demo's replay does.
        shifted = resources["store"].read_frame(features_key(SHIFTED))
        scores = onnx_metrics.predict(onnx_metrics.session(registry.onnx_bytes(first)), shifted)
        ship_served(resources["store"], shifted, scores, first, SHIFTED)

        lines = run_monitoring_loop(
            instance, resources, months=[UNCHANGED, SHIFTED], op_config=fast, live_month=SHIFTED
        )
        text = "\n".join(lines)

        assert f"{UNCHANGED} (batch features): no drift" in text
        assert f"{SHIFTED} (served traffic): DRIFT - {SHIFTED_COLUMN}" in text
        assert f"live performance {SHIFTED}, judged on served predictions (labels {len(shifted)} of" in text
        window = "train 2013-03..2013-05, validate 2013-02, evaluate 2013-01"
        assert f"drift_sensor: requested training_job ({window})" in text
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="training_job", tags={"mlops/trigger": "drift_sensor"}))
        assert len(runs) == 1 and runs[0].tags["mlops/partitions"] == SHIFTED
        assert f"retraining run {runs[0].run_id}" in text

        challenger = registry.client().get_model_version(registry.model_name, str(int(first) + 1))
        assert challenger.tags["train_months"] == "2013-03,2013-04,2013-05"
        assert challenger.tags["evaluation_month"] == "2013-01"
        decision = challenger.tags["promotion_decision"]
        assert f"challenger v{challenger.version} {decision}: {challenger.tags['promotion_reason']}" in text
        champion = str(registry.version_by_alias(CHAMPION).version)
        assert champion == (str(challenger.version) if decision == "approved" else first)
        assert f"champion now v{champion} (was v{first})" in text
        # The newest drifted month is measured again against whichever model is champion now.
        assert f"after retraining, against v{champion}: {SHIFTED}" in text
        assert "drift_sensor next tick: " in text
        assert_the_daemon_carries_on(instance, resources)


def assert_the_daemon_carries_on(instance: dg.DagsterInstance, resources: dict) -> None:
    """What `make ui` does next: the daemon ticks every sensor and the schedule with the state it has
    (no cursor: the loop ran in process), several times. It must request nothing the loop handled."""
    definitions = defs()
    # The served traffic the loop judged is not judged again.
    with dg.build_sensor_context(instance=instance, resources=resources, definitions=definitions) as context:
        assert not served_traffic_sensor.evaluate_tick(context).run_requests
    for name in ("drift_sensor", "live_performance_sensor"):
        sensor, cursor = definitions.get_sensor_def(name), None
        for _ in range(3):
            with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions) as context:
                result = sensor.evaluate_tick(context)
            assert not result.run_requests, f"{name}: {result.run_requests}"
            cursor = result.cursor
    schedule = definitions.resolve_schedule_def("monthly_retraining")
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2014, 1, 1, 4, tzinfo=UTC)
    ) as context:
        assert not schedule.evaluate_tick(context).run_requests
    cursor = None
    for _ in range(2):
        result = dg.evaluate_automation_conditions(
            defs=definitions, instance=instance, asset_selection=dg.AssetSelection.groups("monitoring"), cursor=cursor
        )
        assert result.total_requested == 0
        cursor = result.cursor
