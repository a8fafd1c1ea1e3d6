"""Operating the server: auth, TLS, backpressure, metrics, the prediction log, graceful shutdown,
worker processes and configuration from the environment."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving import demo_models as dm
from serving.settings import parse_settings
from tests.serving.support import MODEL, REPO_ROOT, http_get, infer_inputs, wait_until

pytestmark = pytest.mark.timeout(180)

SEGMENT = re.compile(r"^predictions-\d{8}-\d{8}T\d{6}-\d+-\d+\.jsonl$")


def read_log(folder) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        assert SEGMENT.match(path.name), path.name
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


# --- security -------------------------------------------------------------------------------------


def test_bearer_token(serve, model_files):
    server = serve(model_path=str(model_files["flight_v1"]), token="s3cret")
    probe = infer_inputs(dm.flight_rows(1))
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
        with pytest.raises(InferenceServerException) as err:
            server.client().infer(MODEL, probe, headers=headers)
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as err:
        server.client().get_model_metadata(MODEL)
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"

    good = {"authorization": "Bearer s3cret"}
    assert server.client().infer(MODEL, probe, headers=good).as_numpy("probability").shape == (1, 1)
    assert server.client().get_model_metadata(MODEL, headers=good).name == MODEL
    # Health stays open: liveness/readiness RPCs, the gRPC health service and the HTTP side port.
    assert server.client().is_server_live() and server.client().is_server_ready()
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert http_get(server.http + "/ready")[0] == 200
    assert "nv_inference_request_success" in http_get(server.http + "/metrics")[1]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_with_token(serve, model_files, certificate):
    cert, key = certificate
    server = serve(model_path=str(model_files["flight_v1"]), tls_cert=str(cert), tls_key=str(key), token="t0k")
    client = grpcclient.InferenceServerClient(f"localhost:{server.port}", ssl=True, root_certificates=str(cert))
    result = client.infer(MODEL, infer_inputs(dm.flight_rows(2)), headers={"authorization": "Bearer t0k"})
    assert result.as_numpy("probability").shape == (2, 1)
    # A plaintext client cannot talk to the TLS port.
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(f"localhost:{server.port}").is_server_live(client_timeout=3)


# --- backpressure -----------------------------------------------------------------------------------


def test_full_queue_is_resource_exhausted_at_once(serve, model_files):
    # 16 rows of the slow model take tens of milliseconds: a burst of 40 outruns it for sure.
    server = serve(model_name="slow", model_path=str(model_files["slow"]), max_batch_size=16, queue_capacity=2)
    x = infer_inputs({"x": np.ones((16, 1), np.float32)})

    async def burst(n: int):
        import tritonclient.grpc.aio as aioclient

        client = aioclient.InferenceServerClient(server.url)
        try:
            return await asyncio.gather(*[client.infer("slow", x) for _ in range(n)], return_exceptions=True)
        finally:
            await client.close()

    outcomes = asyncio.run(burst(40))
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(f, InferenceServerException) for f in failures), failures
    codes = {f.status() for f in failures}
    assert codes == {"StatusCode.RESOURCE_EXHAUSTED"}
    assert any("queue is full" in f.message() for f in failures)
    assert 3 <= len(outcomes) - len(failures) < 40
    client = server.client()
    assert client.is_server_ready()
    assert client.infer("slow", x).as_numpy("y").shape == (16, 1)
    stats = client.get_inference_statistics("slow").model_stats[0].inference_stats
    assert stats.fail.count == len(failures)
    metrics = http_get(server.http + "/metrics")[1]
    assert (
        f'nv_inference_request_failure{{model="slow",version="1",reason="RESOURCE_EXHAUSTED"}} {len(failures)}'
        in metrics
    )


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_endpoint(serve, model_files):
    server = serve(model_path=str(model_files["flight_v1"]))
    client = server.client()
    for n in (1, 4, 16):
        client.infer(MODEL, infer_inputs(dm.flight_rows(n)))
    with pytest.raises(InferenceServerException):
        client.infer(MODEL, infer_inputs({**dm.flight_rows(1), "temp": np.full((1, 1), np.nan, np.float32)}))
    with pytest.raises(InferenceServerException):
        client.infer("nope", infer_inputs(dm.flight_rows(1)))
    status, text = http_get(server.http + "/metrics")
    assert status == 200
    labels = 'model="flight_delay",version="1"'
    assert "# TYPE nv_inference_request_success counter" in text
    assert f"nv_inference_request_success{{{labels}}} 3" in text
    assert f'nv_inference_request_failure{{{labels},reason="INVALID_ARGUMENT"}} 1' in text
    assert f"nv_inference_count{{{labels}}} 21" in text
    assert f"nv_inference_exec_count{{{labels}}} 3" in text
    for name in (
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        assert re.search(rf"^{name}\{{{labels}\}} \d+$", text, re.M), name
    assert f'mlops_serve_batch_size_bucket{{le="4.0",{labels}}} 2.0' in text
    assert f"mlops_serve_batch_size_count{{{labels}}} 3.0" in text
    assert f"mlops_serve_batch_size_sum{{{labels}}} 21.0" in text
    assert f"mlops_serve_compute_duration_seconds_count{{{labels}}} 3.0" in text
    assert f"mlops_serve_queue_duration_seconds_count{{{labels}}} 3.0" in text
    assert 'mlops_serve_model_version_loaded{alias="champion",model="flight_delay",version="1"} 1.0' in text
    assert 'mlops_serve_rejected_requests_total{code="NOT_FOUND"} 1.0' in text
    assert "mlops_serve_prediction_log_records_total" in text


# --- prediction log ---------------------------------------------------------------------------------


def test_prediction_log_records_every_request(serve, model_files, tmp_path):
    folder = tmp_path / "plog"
    server = serve(model_path=str(model_files["types"]), model_name="types", prediction_log_dir=str(folder))
    client = server.client()
    arrays = {
        "f32": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
        "f64": np.array([[0.5], [1.5]]),
        "i64": np.array([[1], [2]], np.int64),
        "i32": np.array([[3], [4]], np.int32),
        "flag": np.array([[True], [False]]),
        "label": np.array([["a"], ["b"]], dtype=object),
    }
    for i in range(5):
        client.infer("types", infer_inputs(arrays), request_id=f"r{i}")
    server.stop()
    assert not list(folder.glob("*.open"))
    records = read_log(folder)
    assert [r["request_id"] for r in records] == [f"r{i}" for i in range(5)]
    first = records[0]
    assert set(first) == {"ts", "request_id", "model_name", "model_version", "inputs", "outputs"}
    assert first["model_name"] == "types" and first["model_version"] == "1"
    assert dt.datetime.fromisoformat(first["ts"]).tzinfo is not None
    assert first["inputs"]["f32"] == [1.0, 2.0, 3.0, 4.0]
    assert first["inputs"]["label"] == ["a", "b"] and first["inputs"]["flag"] == [True, False]
    assert first["outputs"]["total"] == [8.5, 24.5] and first["outputs"]["label_out"] == ["a", "b"]


# --- graceful shutdown --------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_keeps_the_log_complete(serve_process, model_files, tmp_path):
    folder = tmp_path / "plog"
    server = serve_process(
        [
            "--model-path",
            str(model_files["flight_v1"]),
            "--model-name",
            MODEL,
            "--prediction-log-dir",
            str(folder),
            "--grace-period",
            "20",
        ]
    )
    server.wait_ready()
    probe = infer_inputs(dm.flight_rows(4))
    ok: list[str] = []
    refused: list[str] = []
    other: list[BaseException] = []
    lock = threading.Lock()
    counter = iter(range(10**9))

    def load():
        client = grpcclient.InferenceServerClient(server.url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                request_id = f"req-{next(counter)}"
            try:
                client.infer(MODEL, probe, request_id=request_id, client_timeout=30)
            except InferenceServerException as exc:
                # After the stop: the server refuses new calls or the connection is gone.
                if exc.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"):
                    refused.append(request_id)
                    return
                other.append(exc)
                return
            with lock:
                ok.append(request_id)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: len(ok) >= 200, 30, what="load")
    assert server.terminate(timeout=60) == 0
    for t in threads:
        t.join(30)
    assert other == []
    assert len(refused) == len(threads)  # every client ended on the stop, none on an error
    assert not list(folder.glob("*.open"))
    logged = {r["request_id"] for r in read_log(folder)}
    # Every request that got an answer is in the log; nothing else is.
    assert set(ok) <= logged
    assert logged <= set(ok) | set(refused)
    assert "graceful stop" in server.logs() and '"msg": "stopped"' in server.logs()


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(serve_process, model_files, tmp_path):
    """Requests the server holds when SIGTERM arrives complete and are logged; later ones are refused."""
    folder = tmp_path / "plog"
    server = serve_process(
        [
            "--max-batch-size",
            "1024",
            "--model-path",
            str(model_files["slow"]),
            "--model-name",
            "slow",
            "--prediction-log-dir",
            str(folder),
            "--grace-period",
            "30",
        ]
    )
    server.wait_ready()
    rows = infer_inputs({"x": np.ones((1024, 1), np.float32)})  # a second or more of compute per request
    outcomes: dict[str, object] = {}

    def send(request_id: str) -> None:
        try:
            result = grpcclient.InferenceServerClient(server.url).infer(
                "slow", rows, request_id=request_id, client_timeout=60
            )
            outcomes[request_id] = result.as_numpy("y").shape
        except InferenceServerException as exc:
            outcomes[request_id] = exc.status()

    threads = [threading.Thread(target=send, args=(f"held-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    pending = 'nv_inference_pending_request_count{model="slow",version="1"} 3'
    wait_until(lambda: pending in http_get(server.http + "/metrics")[1], 30, what="3 requests in flight")
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: http_get(server.http + "/ready")[0] == 503, 10, what="not ready while draining")
    late = grpcclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException) as err:
        late.infer("slow", rows, request_id="late", client_timeout=30)
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    for t in threads:
        t.join(60)
    assert server.terminate(timeout=60) == 0
    assert outcomes == {f"held-{i}": (1024, 1) for i in range(3)}
    assert sorted(r["request_id"] for r in read_log(folder)) == ["held-0", "held-1", "held-2"]


# --- worker processes ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_share_one_port(serve_process, model_files, tmp_path):
    server = serve_process(
        [
            "--model-path",
            str(model_files["flight_v1"]),
            "--workers",
            "2",
            "--prediction-log-dir",
            str(tmp_path / "plog"),
        ]
    )
    server.wait_ready(90)
    pids = set()
    for _ in range(24):  # new connections spread over the workers by SO_REUSEPORT
        client = grpcclient.InferenceServerClient(server.url)
        response = client.infer(MODEL, infer_inputs(dm.flight_rows(1))).get_response()
        pids.add(response.id.split("-")[1])
        client.close()
    assert len(pids) == 2
    # The parent's /metrics sums the workers' snapshots (published every second).
    wait_until(
        lambda: (
            'nv_inference_request_success{model="flight_delay",version="1"} 24' in http_get(server.http + "/metrics")[1]
        ),
        10,
        what="summed metrics",
    )
    assert "mlops_serve_workers 2.0" in http_get(server.http + "/metrics")[1]
    assert server.terminate(timeout=60) == 0
    assert len({p.name.split("-")[3] for p in (tmp_path / "plog").glob("*.jsonl")}) == 2


def test_serving_never_imports_dagster():
    import subprocess
    import sys

    code = (
        "import sys, serving.server, serving.servicer, serving.version_sources, serving.alias_follower, "
        "serving.repository, serving.prediction_log, serving.metrics, serving.batching, serving.codec, "
        "serving.interceptors; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'mlflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(REPO_ROOT),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert out.stdout.strip() == "[]"  # no dagster ever; mlflow only once the registry is followed


@pytest.mark.slow
def test_workers_that_fail_at_start_stop_the_server(serve_process, model_files, tmp_path):
    server = serve_process(
        [
            "--model-path",
            str(model_files["flight_v1"]),
            "--workers",
            "2",
            "--tls-cert",
            str(tmp_path / "missing.crt"),
            "--tls-key",
            str(tmp_path / "missing.key"),
        ]
    )
    assert server.process.wait(60) == 1  # no restart loop
    assert "worker failed at start" in server.logs()


# --- configuration -------------------------------------------------------------------------------------


def test_flags_fall_back_to_environment(monkeypatch):
    monkeypatch.setenv("MLOPS_SERVE_PORT", "9100")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    monkeypatch.setenv("MLOPS_SERVE_ALIASES", "champion, challenger")
    monkeypatch.setenv("MLOPS_SERVE_BATCHING", "0")
    monkeypatch.setenv("MLOPS_SERVE_TOKEN", "abc")
    monkeypatch.setenv("MLOPS_PREDICTION_LOG_SAMPLE_RATE", "0.25")
    config = parse_settings([])
    assert (config.port, config.tracking_uri, config.aliases) == (9100, "sqlite:///x.db", ["champion", "challenger"])
    assert config.batching is False and config.token == "abc" and config.prediction_log_sample_rate == 0.25
    assert config.model_name == "flight_delay"
    assert parse_settings(["--port", "9200", "--batching"]).port == 9200  # flags win
    assert parse_settings(["--batching"]).batching is True
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLOPS_HOME", "/srv/mlops")
    assert parse_settings([]).tracking_uri == "sqlite:////srv/mlops/mlflow.db"  # the pipeline's local store
    with pytest.raises(SystemExit):
        parse_settings(["--tls-cert", "only-a-cert.pem"])
