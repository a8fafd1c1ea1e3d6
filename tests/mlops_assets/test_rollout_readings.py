"""Readings of a real mlops-serve's /metrics, differenced into the window the rollout gates judge."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from mlops_assets.rollout.readings import combine, parse_exposition
from resources.live_metrics import LiveMetrics
from serving import demo_models

MODEL = "flight_delay"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(rows: dict[str, np.ndarray]):
    tensors = []
    for name, array in rows.items():
        tensor = grpcclient.InferInput(
            name, list(array.shape), "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
        )
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


@pytest.fixture
def server(tmp_path):
    model = demo_models.save(demo_models.flight_model(seed=0), tmp_path / "model.onnx")
    grpc_port, metrics_port = _port(), _port()
    args = [Path(sys.executable).parent / "mlops-serve", "--host", "127.0.0.1", "--port", str(grpc_port)]
    args += ["--metrics-port", str(metrics_port), "--http-port", "-1", "--model-path", str(model)]
    args += ["--model-name", MODEL, "--model-version", "7", "--prediction-log-dir", str(tmp_path / "log")]
    args += ["--log-ship-to", "none", "--cache-dir", str(tmp_path / "cache")]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed after the process
    process = subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.is_model_ready(MODEL):
                break
        except grpcclient.InferenceServerException:
            pass
        time.sleep(0.2)
    else:
        pytest.fail((tmp_path / "server.log").read_text())
    yield client, f"http://127.0.0.1:{metrics_port}/metrics"
    process.terminate()
    process.wait(30)
    log.close()


def _page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_a_window_counts_exactly_the_requests_sent_inside_it(server):
    client, url = server
    rows = demo_models.flight_rows(4)
    for _ in range(5):  # before the window
        client.infer(MODEL, _inputs(rows))
    before = parse_exposition(_page(url), MODEL)["7"]
    for _ in range(30):
        client.infer(MODEL, _inputs(rows))
    bad = {**rows, "hour": np.zeros((4, 2), dtype=np.float32)}
    for _ in range(3):
        with pytest.raises(grpcclient.InferenceServerException):
            client.infer(MODEL, _inputs(bad))
    after = parse_exposition(_page(url), MODEL)["7"]

    window = after.since(before)
    assert (window.requests, window.failures) == (33, 3)
    assert window.latency.total == 30  # the latency histogram counts answered requests
    assert 0 < window.latency.quantile(0.99) < 1.0
    with pytest.raises(ValueError, match="went backwards"):
        before.since(after)
    # Two replicas' readings add up per version.
    assert combine([{"7": after}, {"7": after}])["7"].successes == 2 * after.successes
    assert parse_exposition(_page(url), "another_model") == {}


@pytest.fixture
def prometheus(tmp_path, server):
    binary = Path("/usr/bin/prometheus")
    if not binary.exists():
        if os.environ.get("MLOPS_REQUIRE_PROMETHEUS"):
            pytest.fail("MLOPS_REQUIRE_PROMETHEUS is set but /usr/bin/prometheus is missing (Debian's prometheus)")
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it)")
    target = urllib.parse.urlparse(server[1]).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: serving, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    port = _port()
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 - closed after the process
    process = subprocess.Popen(
        [str(binary), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        + [f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(30)
    log.close()


def test_prometheus_gives_the_same_reading_as_the_scrape(server, prometheus):
    client, url = server
    rows = demo_models.flight_rows(4)
    for _ in range(20):
        client.infer(MODEL, _inputs(rows))
    with pytest.raises(grpcclient.InferenceServerException):
        client.infer(MODEL, _inputs({**rows, "hour": np.zeros((4, 2), dtype=np.float32)}))
    scraped = LiveMetrics(scrape_urls=[url]).readings(MODEL)["7"]
    queried = LiveMetrics(prometheus_url=prometheus)
    deadline = time.monotonic() + 60
    reading = None
    while time.monotonic() < deadline:
        try:
            reading = queried.readings(MODEL).get("7")
        except dg.Failure:  # Prometheus is still starting
            reading = None
        if reading == scraped:
            break
        time.sleep(0.5)
    assert reading == scraped, f"PromQL {reading} != scrape {scraped}"
    assert (scraped.successes, scraped.failures) == (20, 1)


def test_an_unreachable_replica_is_a_failure_naming_it():
    url = f"http://127.0.0.1:{_port()}/metrics"
    with pytest.raises(dg.Failure, match=f"{url} did not answer"):
        LiveMetrics(scrape_urls=[url]).readings(MODEL)
