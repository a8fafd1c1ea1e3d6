"""monitoring_sensor's conditions on a real instance: new validated features bring their month's
drift report and outcomes, new outcomes and batch predictions its live-performance report; a quarantined month and a new
champion bring nothing, and a failed champion_model blocks nothing."""

from __future__ import annotations

import dagster as dg
import numpy as np

from mlops_assets.definitions import defs
from resources import FlightSource
from sensors.monitoring import monitoring_sensor
from tests.conftest import materialize

DRIFT, OUTCOMES, LIVE = dg.AssetKey("drift_report"), dg.AssetKey("outcomes"), dg.AssetKey("live_performance")


def test_reports_follow_new_checked_data_and_ignore_champion_moves(resources, instance, tmp_path):
    definitions = defs()
    assert definitions.get_sensor_def("monitoring_sensor") is monitoring_sensor
    assert monitoring_sensor.default_status == dg.DefaultSensorStatus.RUNNING

    def evaluate(cursor):
        return dg.evaluate_automation_conditions(
            defs=definitions, instance=instance, asset_selection=dg.AssetSelection.groups("monitoring"), cursor=cursor
        )

    first = evaluate(None)
    assert first.total_requested == 0  # turning the sensor on does not rerun history

    instance.report_runless_asset_event(dg.AssetMaterialization("champion_model"))
    # The latest champion_model run failed (here: it has no registered_model to read). That says
    # nothing about any month's data, so it must not hold back a single report.
    assert not materialize(["champion_model"], resources, instance=instance, raise_on_error=False).success
    fresh = materialize(["raw_flights", "validated_features"], resources, instance=instance, partition_key="2013-02")
    assert fresh.success
    bad = tmp_path / "bad.csv"
    broken = FlightSource().month("2013-03")
    broken["visib"] = np.nan
    broken.to_csv(bad, index=False)
    quarantined = materialize(
        ["raw_flights", "validated_features"],
        {**resources, "source": FlightSource(uri=str(bad))},
        instance=instance,
        partition_key="2013-03",
        raise_on_error=False,
    )
    assert not quarantined.success
    second = evaluate(first.cursor)
    assert second.get_requested_partitions(DRIFT) == {"2013-02"}  # not the quarantined 2013-03
    assert second.get_requested_partitions(OUTCOMES) == {"2013-02"}  # its labels, derived from the features
    assert second.get_requested_partitions(LIVE) == set()  # 2013-02 has no outcomes or batch predictions yet

    third = evaluate(second.cursor)
    assert third.total_requested == 0  # each update is handled once

    instance.report_runless_asset_event(dg.AssetMaterialization("champion_model"))
    instance.report_runless_asset_event(dg.AssetMaterialization("outcomes", partition="2013-02"))
    instance.report_runless_asset_event(dg.AssetMaterialization("batch_predictions", partition="2013-02"))
    fourth = evaluate(third.cursor)
    assert fourth.get_requested_partitions(DRIFT) == set()  # a new champion reruns nothing
    assert fourth.get_requested_partitions(LIVE) == {"2013-02"}
