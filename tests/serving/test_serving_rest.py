"""The Open Inference Protocol over HTTP/REST: tritonclient.http and plain JSON requests get what gRPC
gets from the same server (outputs, metadata, errors), through the same data plane (auth, metrics,
prediction log)."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serving import demo_models as dm
from tests.serving.support import MODEL, free_port, http_get, local_predict, loopback_settings, running, wait_until
from tests.serving.test_serving_ops import certificate  # noqa: F401 - the TLS fixture, shared

pytestmark = pytest.mark.timeout(120)

MAX_BATCH = 8


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rest")
    settings = loopback_settings(
        folder, model_path=str(model_files["flight_v1"]), max_batch_size=MAX_BATCH, http_port=free_port()
    )
    with running(settings) as server:
        yield server


def rest_url(server) -> str:
    return f"127.0.0.1:{server.worker.http_port}"


def inputs(module, arrays: dict[str, np.ndarray], binary: bool = True, datatypes: dict[str, str] | None = None):
    """tritonclient InferInputs of `module` (tritonclient.grpc or .http) for `arrays`."""
    tensors = []
    for name, array in arrays.items():
        datatype = (datatypes or {}).get(name) or (
            "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
        )
        tensor = module.InferInput(name, list(array.shape), datatype)
        if module is httpclient:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def json_body(arrays: dict[str, np.ndarray], **fields) -> dict:
    return {
        **fields,
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": "BYTES" if array.dtype == object else "FP32",
                "data": array.reshape(-1).tolist(),
            }
            for name, array in arrays.items()
        ],
    }


def request(server, path: str, body=None, headers: dict | None = None) -> tuple[int, dict]:
    """A curl-style call: JSON in, (status, JSON) out."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    call = urllib.request.Request(f"http://{rest_url(server)}{path}", data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- health and metadata ------------------------------------------------------------------------------


def test_health_and_metadata_match_grpc(server):
    rest = httpclient.InferenceServerClient(rest_url(server))
    grpc = server.client()
    assert rest.is_server_live() and rest.is_server_ready()
    for version in ("", "1", "champion"):
        assert rest.is_model_ready(MODEL, version)
    assert not rest.is_model_ready(MODEL, "42") and not rest.is_model_ready("nope")
    assert rest.get_server_metadata() == {
        "name": "mlops-serve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    metadata = rest.get_model_metadata(MODEL)
    expected = grpc.get_model_metadata(MODEL, as_json=True)
    assert metadata["name"] == expected["name"] == MODEL
    assert metadata["versions"] == expected["versions"] == ["1"]
    assert metadata["platform"] == expected["platform"]
    for kind in ("inputs", "outputs"):
        assert metadata[kind] == [{**t, "shape": [int(d) for d in t["shape"]]} for t in expected[kind]]
    assert request(server, f"/v2/models/{MODEL}/versions/champion")[1] == metadata


def test_unknown_models_paths_and_methods_are_json_errors(server):
    assert request(server, "/v2/models/nope") == (404, {"error": "model 'nope' is not served here"})
    assert request(server, "/v2/models/nope/ready")[0] == 404
    status, body = request(server, f"/v2/models/{MODEL}/versions/42/infer", json_body(dm.flight_rows(1)))
    assert status == 404 and "'42'" in body["error"]
    assert request(server, "/v2/nothing/here")[0] == 404
    status, body = request(server, f"/v2/models/{MODEL}/ready", b"{}")  # POST where GET is served
    assert status == 405 and body["error"]
    with pytest.raises(InferenceServerException) as err:
        httpclient.InferenceServerClient(rest_url(server)).get_model_metadata("nope")
    assert err.value.status() == "404" and "nope" in err.value.message()


# --- inference ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 5, MAX_BATCH])
def test_rest_answers_what_grpc_answers(server, model_files, rows):
    arrays = dm.flight_rows(rows, seed=rows)
    expected = server.client().infer(MODEL, inputs(grpcclient, arrays)).as_numpy("probability")
    np.testing.assert_allclose(expected, local_predict(model_files["flight_v1"], arrays)[0], rtol=1e-6)
    rest = httpclient.InferenceServerClient(rest_url(server))
    # tritonclient.http's default: binary tensor data both ways.
    result = rest.infer(MODEL, inputs(httpclient, arrays), request_id="binary")
    reply = result.get_response()
    assert reply["model_version"] == "1" and reply["id"] == "binary"
    assert reply["outputs"][0]["parameters"] == {"binary_data_size": 4 * rows}
    np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-6)
    # All JSON: inputs with binary_data=False, outputs asked for as JSON.
    json_only = rest.infer(
        MODEL,
        inputs(httpclient, arrays, binary=False),
        outputs=[httpclient.InferRequestedOutput("probability", binary_data=False)],
    )
    assert "data" in json_only.get_response()["outputs"][0]
    np.testing.assert_allclose(json_only.as_numpy("probability"), expected, rtol=1e-6)
    # Plain JSON, as curl sends it, by version and by alias.
    for path in (f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/versions/champion/infer"):
        status, body = request(server, path, json_body(arrays, id="curl"))
        assert status == 200, body
        assert body["model_name"] == MODEL and body["model_version"] == "1" and body["id"] == "curl"
        (output,) = body["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == ("probability", "FP32", [rows, 1])
        np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(rows, 1), expected, rtol=1e-6)


def test_nested_data_and_edge_casts_are_accepted(server):
    arrays = dm.flight_rows(2, seed=3)
    expected = server.client().infer(MODEL, inputs(grpcclient, arrays)).as_numpy("probability")
    body = json_body(arrays)
    for tensor in body["inputs"]:
        tensor["data"] = [[v] for v in tensor["data"]]  # nested in the tensor's shape
        if tensor["datatype"] == "FP32":
            tensor["datatype"] = "FP64"  # cast to FP32 at the edge, as over gRPC
    status, reply = request(server, f"/v2/models/{MODEL}/infer", body)
    assert status == 200, reply
    np.testing.assert_allclose(np.array(reply["outputs"][0]["data"], np.float32).reshape(2, 1), expected, rtol=1e-6)


def bad_cases() -> dict[str, tuple[dict, list | None]]:
    """Requests both protocols must refuse alike: (arrays, requested outputs)."""
    two = dm.flight_rows(2)
    return {
        "missing input": ({k: v for k, v in two.items() if k != "visib"}, None),
        "unexpected input": ({**two, "extra": np.zeros((2, 1), np.float32)}, None),
        "wrong datatype": ({**two, "hour": np.zeros((2, 1), np.int64)}, None),
        "wrong rank": ({**two, "hour": np.zeros(2, np.float32)}, None),
        "batch sizes disagree": ({**two, "temp": np.zeros((3, 1), np.float32)}, None),
        "batch too large": (dm.flight_rows(MAX_BATCH + 1), None),
        "zero rows": ({k: v[:0] for k, v in two.items()}, None),
        "NaN": ({**two, "precip": np.array([[0.1], [np.nan]], np.float32)}, None),
        "unknown output": (two, ["score"]),
    }


@pytest.mark.parametrize("case", list(bad_cases()))
def test_bad_input_is_400_with_the_grpc_message(server, case):
    arrays, outputs = bad_cases()[case]
    with pytest.raises(InferenceServerException) as grpc_error:
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs or []]
        server.client().infer(MODEL, inputs(grpcclient, arrays), outputs=requested or None)
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as rest_error:
        requested = [httpclient.InferRequestedOutput(name) for name in outputs or []]
        httpclient.InferenceServerClient(rest_url(server)).infer(
            MODEL, inputs(httpclient, arrays), outputs=requested or None
        )
    assert rest_error.value.status() == "400"
    assert rest_error.value.message() == grpc_error.value.message()


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"inputs": "hour"}, "'inputs'"),
        ({"inputs": [{"name": "hour", "datatype": "FP32", "data": [1.0]}]}, "input 'hour': 'shape'"),
        ({"inputs": [{"name": "hour", "shape": [1, 1], "datatype": "FP32"}]}, "input 'hour': 'data' is missing"),
        ({"inputs": [{"name": 7, "shape": [1], "datatype": "FP32", "data": [1]}]}, "inputs[0]: 'name'"),
        ({"inputs": [], "id": 5}, "'id' must be a string"),
        ({"inputs": [], "outputs": [{"name": None}]}, "outputs[0]: 'name'"),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(server, body, field):
    status, reply = request(server, f"/v2/models/{MODEL}/infer", body)
    assert status == 400 and field in reply["error"], reply


def test_malformed_data_is_400_naming_the_input(server):
    arrays = dm.flight_rows(2)
    for tensor, value, message in (
        ("temp", ["warm", "cold"], "input 'temp': FP32 data must be JSON numbers"),
        ("temp", [1.0], "input 'temp': data holds 1 values, shape [2, 1] needs 2"),
        ("carrier", [1, 2], "input 'carrier': BYTES data must be JSON strings"),
        ("temp", [[1.0], [2.0, 3.0]], "input 'temp': 'data' must be a list of numbers"),
    ):
        body = json_body(arrays)
        next(t for t in body["inputs"] if t["name"] == tensor)["data"] = value
        status, reply = request(server, f"/v2/models/{MODEL}/infer", body)
        assert (status, reply) == (400, {"error": reply["error"]}) and reply["error"].startswith(message), reply
    too_large = b'{"inputs": [' + b" " * (4 * 1024 * 1024) + b"]}"
    status, reply = request(server, f"/v2/models/{MODEL}/infer", too_large)
    assert status == 413 and reply["error"]
    assert request(server, f"/v2/models/{MODEL}/infer", json_body(arrays))[0] == 200


# --- the shared data plane: auth, metrics, prediction log, drain --------------------------------------


def test_bearer_token_guards_rest_like_grpc(serve, model_files):
    running = serve(model_path=str(model_files["flight_v1"]), http_port=free_port(), token="s3cret", admin_token="adm")
    body = json_body(dm.flight_rows(1))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        for path, data in ((f"/v2/models/{MODEL}/infer", body), (f"/v2/models/{MODEL}", None), ("/v2", None)):
            status, reply = request(running, path, data, headers)
            assert (status, reply) == (401, {"error": "missing or invalid bearer token"})
    for path in ("/v2/health/live", "/v2/health/ready"):  # open, like gRPC ServerLive / ServerReady
        assert request(running, path)[0] == 200
    for token in ("s3cret", "adm"):  # the admin token opens the data plane too
        status, reply = request(running, f"/v2/models/{MODEL}/infer", body, {"Authorization": f"Bearer {token}"})
        assert status == 200 and reply["model_version"] == "1"
    client = httpclient.InferenceServerClient(rest_url(running))
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, inputs(httpclient, dm.flight_rows(1)))
    assert err.value.status() == "401"
    result = client.infer(MODEL, inputs(httpclient, dm.flight_rows(1)), headers={"Authorization": "Bearer s3cret"})
    assert result.as_numpy("probability").shape == (1, 1)


def test_tls_with_token(serve, model_files, certificate):  # noqa: F811 - the fixture imported above
    cert, key = certificate
    running = serve(
        model_path=str(model_files["flight_v1"]),
        http_port=free_port(),
        tls_cert=str(cert),
        tls_key=str(key),
        token="t0k",
    )
    url = f"https://localhost:{running.worker.http_port}/v2/models/{MODEL}/infer"
    call = urllib.request.Request(
        url, data=json.dumps(json_body(dm.flight_rows(2))).encode(), headers={"Authorization": "Bearer t0k"}
    )
    with urllib.request.urlopen(call, timeout=10, context=ssl.create_default_context(cafile=str(cert))) as response:
        assert json.loads(response.read())["outputs"][0]["shape"] == [2, 1]
    with pytest.raises(OSError):  # plaintext HTTP cannot talk to the TLS port
        urllib.request.urlopen(url.replace("https", "http"), timeout=3)


def test_metrics_and_prediction_log_count_rest_requests(serve, model_files, tmp_path):
    folder = tmp_path / "plog"
    running = serve(model_path=str(model_files["flight_v1"]), http_port=free_port(), prediction_log_dir=str(folder))
    client = httpclient.InferenceServerClient(rest_url(running))
    for i, rows in enumerate((1, 4, 16)):
        client.infer(MODEL, inputs(httpclient, dm.flight_rows(rows)), request_id=f"rest-{i}")
    running.client().infer(MODEL, inputs(grpcclient, dm.flight_rows(1)), request_id="grpc-0")
    nan = {**dm.flight_rows(1), "temp": np.full((1, 1), np.nan, np.float32)}
    with pytest.raises(InferenceServerException):
        client.infer(MODEL, inputs(httpclient, nan))
    assert request(running, "/v2/models/nope/infer", json_body(dm.flight_rows(1)))[0] == 404
    assert request(running, f"/v2/models/{MODEL}/infer", b"{")[0] == 400
    text = http_get(running.http + "/metrics")[1]
    labels = 'model="flight_delay",version="1"'
    assert f"nv_inference_request_success{{{labels}}} 4" in text
    assert f"nv_inference_count{{{labels}}} 22" in text
    assert f'nv_inference_request_failure{{{labels},reason="INVALID_ARGUMENT"}} 1' in text
    assert 'mlops_serve_rejected_requests_total{code="NOT_FOUND"} 1.0' in text
    assert 'mlops_serve_rejected_requests_total{code="INVALID_ARGUMENT"} 1.0' in text
    stats = running.client().get_inference_statistics(MODEL).model_stats[0]
    assert stats.inference_stats.success.count == 4
    running.stop()
    records = [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]
    assert sorted(r["request_id"] for r in records) == ["grpc-0", "rest-0", "rest-1", "rest-2"]
    rest_2 = next(r for r in records if r["request_id"] == "rest-2")
    assert rest_2["model_version"] == "1" and len(rest_2["inputs"]["carrier"]) == 16
    assert len(rest_2["outputs"]["probability"]) == 16


def test_draining_answers_503_while_requests_in_flight_finish(serve, model_files):
    running = serve(model_name="slow", model_path=str(model_files["slow"]), http_port=free_port(), max_batch_size=1024)
    client = httpclient.InferenceServerClient(rest_url(running), network_timeout=60, connection_timeout=60)
    held: dict[str, object] = {}

    def send() -> None:
        held["shape"] = client.infer("slow", inputs(httpclient, {"x": np.ones((1024, 1), np.float32)})).as_numpy("y")

    thread = threading.Thread(target=send)
    thread.start()
    pending = 'nv_inference_pending_request_count{model="slow",version="1"} 1'
    wait_until(lambda: pending in http_get(running.http + "/metrics")[1], 30, what="a request in flight")
    running.worker.request_stop()
    wait_until(lambda: request(running, "/v2/health/ready")[0] == 503, 10, what="not ready while draining")
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    assert request(running, "/v2/models/slow/infer", body) == (503, {"error": "server is shutting down"})
    assert request(running, "/v2/models/slow/ready") == (503, {"name": "slow", "ready": False})
    thread.join(60)
    assert held["shape"].shape == (1024, 1)


@pytest.mark.slow
def test_workers_share_the_rest_port(serve_process, model_files, tmp_path):
    http_port = free_port()
    server = serve_process(
        [
            "--model-path",
            str(model_files["flight_v1"]),
            "--workers",
            "2",
            "--http-port",
            str(http_port),
            "--prediction-log-dir",
            str(tmp_path / "plog"),
        ]
    )
    server.wait_ready(90)
    pids = set()
    for _ in range(24):  # new connections spread over the workers by SO_REUSEPORT
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        pids.add(client.infer(MODEL, inputs(httpclient, dm.flight_rows(1))).get_response()["id"].split("-")[1])
        client.close()
    assert len(pids) == 2
    assert server.terminate(timeout=60) == 0


def test_http_port_flag_environment_and_workers(monkeypatch):
    from serving.settings import parse_settings

    monkeypatch.delenv("MLOPS_SERVE_HTTP_PORT", raising=False)
    config = parse_settings(["--model-path", "m.onnx"])
    assert (config.http_port, config.port, config.metrics_port) == (8000, 8001, 8002)  # on, Triton's layout
    monkeypatch.setenv("MLOPS_SERVE_HTTP_PORT", "-1")
    assert parse_settings(["--model-path", "m.onnx"]).http_port == -1  # off
    assert parse_settings(["--model-path", "m.onnx", "--http-port", "9000"]).http_port == 9000
    with pytest.raises(SystemExit, match="--http-port"):
        parse_settings(["--model-path", "m.onnx", "--workers", "2", "--http-port", "0"])
