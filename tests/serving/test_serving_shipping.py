"""A real server ships its prediction log where the pipeline reads it: row keys and event time from the
request parameters (gRPC and REST), one UTC event day per `prediction_log/yyyy/mm/dd/` prefix, the local
spool empty after a graceful stop, and an unwritable destination costs no request."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving import demo_models as dm
from serving.log_records import LoggedRequest, decode_segment, segment_key
from serving.metrics import ServerStats
from serving.worker_snapshots import merge_snapshots
from tests.serving.support import MODEL, free_port, http_get, infer_inputs, wait_until
from tests.serving.test_serving_rest import inputs, json_body, request

pytestmark = pytest.mark.timeout(120)

DEC_5_NOON = datetime(2013, 12, 5, 12, tzinfo=UTC)
DEC_9_NOON = datetime(2013, 12, 9, 12, tzinfo=UTC)


def shipped(root: Path) -> dict[str, LoggedRequest]:
    """Every record shipped under `root`, by request id; each segment complete and under its day's key."""
    records = {}
    for path in sorted((root / "prediction_log").rglob("predictions-*.jsonl")):  # not an upload's temporary file
        assert str(path.relative_to(root)) == segment_key(path.name)
        decoded = decode_segment(path.read_bytes())
        assert decoded.corrupt == 0, path
        records |= {r.request_id: r for r in decoded.records}
    return records


def metric(text: str, name: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(f"{name} ")).split()[1])


def spool(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("predictions-*"))


def shipping_server(serve, model_files, tmp_path, **overrides):
    return serve(
        model_path=str(model_files["flight_v1"]),
        http_port=free_port(),
        prediction_log_dir=str(tmp_path / "spool"),
        log_ship_to=str(tmp_path / "artifacts"),
        **overrides,
    )


def test_row_keys_and_event_time_of_grpc_and_rest_requests_reach_the_shipped_segments(serve, model_files, tmp_path):
    running = shipping_server(serve, model_files, tmp_path)
    grpc = running.client()
    rest = httpclient.InferenceServerClient(f"127.0.0.1:{running.worker.http_port}")
    grpc.infer(
        MODEL,
        infer_inputs(dm.flight_rows(3)),
        request_id="grpc-3",
        parameters={"row_key": json.dumps(["a", "b", "c"]), "event_time": "2013-12-05T12:00:00Z"},
    )
    epoch = int(DEC_9_NOON.timestamp())
    grpc.infer(
        MODEL, infer_inputs(dm.flight_rows(1)), request_id="grpc-1", parameters={"row_key": "d", "event_time": epoch}
    )
    rest.infer(
        MODEL,
        inputs(httpclient, dm.flight_rows(2)),
        request_id="rest-2",
        parameters={"row_key": json.dumps(["e", "f"]), "event_time": "2013-12-05T07:00:00-05:00"},
    )
    body = json_body(dm.flight_rows(2), id="curl-2", parameters={"row_key": ["g", "h"], "event_time": epoch + 0.5})
    assert request(running, f"/v2/models/{MODEL}/infer", body)[0] == 200
    grpc.infer(MODEL, infer_inputs(dm.flight_rows(2)), request_id="plain")  # no parameters: today, ids as keys
    running.stop()

    records = shipped(tmp_path / "artifacts")
    assert spool(tmp_path / "spool") == []  # deleted here only once uploaded
    assert set(records) == {"grpc-3", "grpc-1", "rest-2", "curl-2", "plain"}
    assert records["grpc-3"].row_keys == ("a", "b", "c") and records["grpc-3"].time == DEC_5_NOON
    assert records["grpc-1"].row_keys == ("d",) and records["grpc-1"].time == DEC_9_NOON
    assert records["rest-2"].row_keys == ("e", "f") and records["rest-2"].time == DEC_5_NOON
    assert records["curl-2"].row_keys == ("g", "h") and records["curl-2"].time.timestamp() == epoch + 0.5
    plain = records["plain"]
    assert plain.row_keys == ("plain:0", "plain:1") and plain.time == plain.received
    days = {r.request_id: r.time.strftime("%Y/%m/%d") for r in records.values()}
    for path in (tmp_path / "artifacts" / "prediction_log").rglob("*.jsonl"):
        day = str(path.parent.relative_to(tmp_path / "artifacts" / "prediction_log"))
        assert {days[r.request_id] for r in decode_segment(path.read_bytes()).records} == {day}
    assert len(records["grpc-3"].outputs["probability"]) == 3


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"row_key": json.dumps(["a"])}, "row_key"),  # one key for two rows
        ({"row_key": "a"}, "row_key"),
        ({"row_key": json.dumps(["a", 2])}, "row_key"),
        ({"row_key": "[not json"}, "row_key"),
        ({"row_key": 7}, "row_key"),
        ({"event_time": "2013-12-05T12:00:00"}, "event_time"),  # no zone
        ({"event_time": "last tuesday"}, "event_time"),
        ({"event_time": math.nan}, "event_time"),
        ({"event_time": 10**15}, "event_time"),
        ({"event_time": True}, "event_time"),
    ],
)
def test_malformed_parameters_are_refused_naming_the_field_before_the_model_runs(
    serve, model_files, tmp_path, parameters, field
):
    running = shipping_server(serve, model_files, tmp_path)
    rows = dm.flight_rows(2)
    with pytest.raises(InferenceServerException) as raised:
        running.client().infer(MODEL, infer_inputs(rows), request_id="bad-grpc", parameters=parameters)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"parameters.{field}: " in raised.value.message()
    failed = 1
    if parameters != {"event_time": math.nan}:  # JSON has no NaN; gRPC's double parameter carries it
        body = json_body(rows, id="bad-rest", parameters=parameters)
        status, reply = request(running, f"/v2/models/{MODEL}/infer", body)
        assert status == 400 and reply["error"].startswith(f"parameters.{field}: "), reply
        failed += 1
    text = http_get(running.http + "/metrics")[1]
    assert (
        f'nv_inference_request_failure{{model="flight_delay",version="1",reason="INVALID_ARGUMENT"}} {failed}' in text
    )
    assert 'nv_inference_exec_count{model="flight_delay",version="1"} 0' in text  # the model never ran
    running.client().infer(MODEL, infer_inputs(rows), request_id="good")  # and the next request is answered
    running.stop()
    assert set(shipped(tmp_path / "artifacts")) == {"good"}


def test_an_unwritable_destination_costs_no_request_and_ships_once_it_comes_back(serve, model_files, tmp_path):
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder should be")  # mkdir fails with ENOTDIR, even as root
    destination = blocker / "artifacts"
    running = serve(
        model_path=str(model_files["flight_v1"]),
        prediction_log_dir=str(tmp_path / "spool"),
        prediction_log_max_age_s=0.2,  # segments close while traffic flows
        log_ship_to=str(destination),
    )
    client = running.client()
    sent = []

    def send(count: int) -> None:
        for _ in range(count):
            sent.append(f"r{len(sent)}")
            client.infer(MODEL, infer_inputs(dm.flight_rows(1)), request_id=sent[-1], parameters={"row_key": sent[-1]})

    def metrics() -> str:
        return http_get(running.http + "/metrics")[1]

    send(20)
    wait_until(lambda: "mlops_serve_prediction_log_ship_errors_total{" in metrics(), 15, what="a counted ship error")
    send(20)  # answered while the store is down
    text = metrics()
    assert 'mlops_serve_prediction_log_ship_errors_total{reason="ENOTDIR"}' in text, text
    assert metric(text, "mlops_serve_prediction_log_shipped_segments_total") == 0
    assert metric(text, "mlops_serve_prediction_log_pending_segments") >= 1 and spool(tmp_path / "spool")
    statistics = client.get_inference_statistics(MODEL).model_stats[0].inference_stats
    assert (statistics.success.count, statistics.fail.count) == (40, 0)

    blocker.unlink()  # the store comes back
    wait_until(lambda: shipped(destination), 20, interval=0.2, what="segments shipped after the store came back")
    assert metric(metrics(), "mlops_serve_prediction_log_shipped_segments_total") >= 1
    send(5)
    running.stop()
    assert sorted(shipped(destination)) == sorted(sent)
    assert spool(tmp_path / "spool") == []


def test_the_parents_view_sums_shipping_counters_and_takes_the_largest_pending_count():
    stats = [ServerStats(), ServerStats()]
    for i, worker in enumerate(stats):
        worker.record_log_shipped(3 + i)
        worker.record_log_ship_error("EACCES")
        worker.log_pending = lambda i=i: 4 + i  # both count the one folder they share
    merged = merge_snapshots([s.snapshot() for s in stats])
    assert merged["log"]["shipped"] == 7 and merged["log"]["ship_errors"] == {"EACCES": 2}
    assert merged["log"]["pending_segments"] == 5


def test_the_default_destination_is_the_pipelines_artifact_store(monkeypatch, tmp_path):
    from serving.settings import parse_settings, ship_destination

    monkeypatch.delenv("MLOPS_SERVE_LOG_SHIP_TO", raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    config = parse_settings(["--model-path", "m.onnx"])
    assert config.log_ship_to is None and ship_destination(config.log_ship_to) == str(tmp_path / "artifacts")
    assert ship_destination(parse_settings(["--model-path", "m.onnx", "--log-ship-to", "none"]).log_ship_to) is None
    monkeypatch.setenv("MLOPS_SERVE_LOG_SHIP_TO", "s3://bucket/mlops/artifacts")
    assert parse_settings(["--model-path", "m.onnx"]).log_ship_to == "s3://bucket/mlops/artifacts"
    assert parse_settings(["--model-path", "m.onnx", "--log-ship-to", "/srv/store"]).log_ship_to == "/srv/store"


@pytest.mark.slow
def test_workers_share_the_spool_and_ship_every_segment_on_sigterm(serve_process, model_files, tmp_path):
    folders = ["--prediction-log-dir", str(tmp_path / "spool"), "--log-ship-to", (tmp_path / "artifacts").as_uri()]
    server = serve_process(["--model-path", str(model_files["flight_v1"]), "--workers", "2", *folders])
    server.wait_ready()
    sent = [f"w{i}" for i in range(40)]
    for request_id in sent:  # a new connection each time: SO_REUSEPORT spreads them over the workers
        client = grpcclient.InferenceServerClient(server.url)
        client.infer(
            MODEL, infer_inputs(dm.flight_rows(1)), request_id=request_id, parameters={"event_time": 1386244800}
        )
        client.close()
    text = http_get(server.http + "/metrics")[1]
    assert "mlops_serve_prediction_log_pending_segments 0.0" in text
    assert server.terminate(timeout=60) == 0, server.logs()[-2000:]
    records = shipped(tmp_path / "artifacts")
    assert sorted(records) == sorted(sent) and spool(tmp_path / "spool") == []
    assert {p.parent.name for p in (tmp_path / "artifacts" / "prediction_log").rglob("*.jsonl")} == {"05"}
    assert len({p.name.split("-")[3] for p in (tmp_path / "artifacts").rglob("*.jsonl")}) == 2  # both workers' pids
    assert np.isfinite([r.outputs["probability"][0] for r in records.values()]).all()
