"""served_traffic_sensor on a real instance: newly shipped segments bring their month's reports, and
segments a report has already read bring nothing (so the daemon after `make demo` repeats nothing)."""

from __future__ import annotations

import dagster as dg

from mlops_assets.definitions import defs
from resources import LocalArtifactStore, ServedPredictions
from sensors.served import served_traffic_sensor
from serving.log_records import segment_key

DRIFT, LIVE = dg.AssetKey("drift_report"), dg.AssetKey("live_performance")


def _ship(store, name: str) -> None:
    store.write_bytes(segment_key(name), b"")


def _tick(instance, served):
    with dg.build_sensor_context(instance=instance, resources={"served": served}, definitions=defs()) as context:
        return served_traffic_sensor.evaluate_tick(context)


def _judged(instance, month: str, segments: int) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization("drift_report", partition=month, metadata={"served_segments": segments})
    )


def test_new_segments_request_their_months_reports_once(instance, tmp_path):
    store = LocalArtifactStore(root=str(tmp_path))
    served = ServedPredictions(store=store)
    first = _tick(instance, served)
    assert not first.run_requests and "every segment" in first.skip_message

    _ship(store, "predictions-20130210-20130210T120000-7-000001.jsonl")
    _ship(store, "predictions-20130211-20130211T120000-7-000002.jsonl")
    (request,) = _tick(instance, served).run_requests
    assert request.partition_key == "2013-02" and request.asset_selection == [DRIFT]  # no outcomes yet
    assert request.run_key == "served:2013-02:2" and request.tags["mlops/trigger"] == "served_traffic_sensor"

    _judged(instance, "2013-02", 2)  # the report read both
    assert not _tick(instance, served).run_requests

    # A worker that opened its segment earlier ships it later: counted, not lost behind a newer name.
    _ship(store, "predictions-20130210-20130210T110000-8-000001.jsonl")
    instance.report_runless_asset_event(dg.AssetMaterialization("outcomes", partition="2013-02"))
    (request,) = _tick(instance, served).run_requests
    assert request.run_key == "served:2013-02:3" and request.asset_selection == [DRIFT, LIVE]
