"""The load test's driver against real servers: Locust in its own process, open-loop arrivals, psutil on the
server. A fast model keeps up, a slow one falls behind while arrivals hold their rate, and a leaking server is
caught by its RSS."""

import subprocess
import sys
from pathlib import Path

import pytest

from mlops_assets.load_test.driver import Target, drive
from mlops_assets.load_test.figures import Slo, pacing_shortfall, slo_breaches, summarize
from mlops_assets.load_test.memory import memory_growth, rss_trend
from serving import demo_models as dm
from tests.serving.support import MODEL, ServerProcess, free_port, wait_until


@pytest.fixture
def serve_model(tmp_path):
    """`serve_model(onnx_model, *args)`: a real mlops-serve process on loopback serving one ONNX file."""
    processes = []

    def start(model, *args: str) -> ServerProcess:
        path = dm.save(model, tmp_path / f"model-{len(processes)}.onnx")
        process = ServerProcess(
            ["--model-path", str(path), "--prediction-log-dir", str(tmp_path / "log"), *args],
            log_path=tmp_path / f"server-{len(processes)}.log",
        )
        processes.append(process)
        process.wait_ready()
        return process

    yield start
    for process in processes:
        process.kill()


def _flight_payloads(n: int = 32) -> list[dict]:
    rows = dm.flight_rows(n)
    return [{name: column[i : i + 1] for name, column in rows.items()} for i in range(n)]


def test_arrivals_hold_the_offered_rate_when_the_server_keeps_up(serve_model, tmp_path):
    server = serve_model(dm.flight_model(seed=0))
    target = Target(server.url, MODEL, "1")
    run = drive(target, _flight_payloads(), [20.0, 100.0], 3.0, 5.0, tmp_path, server.process.pid)
    for record in run.phases:
        phase = summarize(record)
        assert pacing_shortfall(phase, tolerance=0.1) is None, phase
        assert phase.errors == {} and phase.throughput_rps == pytest.approx(record.offered_rps, rel=0.15)
        assert 0 < phase.p50_ms <= phase.p99_ms and record.server_cpu_s > 0 and record.generator_cpu_s > 0
    assert slo_breaches(summarize(run.phases[-1]), Slo(p99_ms=1000, error_rate=0)) == []
    assert len(run.rss_samples) >= 10 and all(rss > 10 * 2**20 for _, rss in run.rss_samples)


def test_a_slow_server_does_not_slow_the_arrivals_its_latency_grows(serve_model, tmp_path):
    """Open loop: answers taking longer than the gap between arrivals must not delay the next arrival (the
    gevent trap: a blocking gRPC call would turn this into one request at a time)."""
    server = serve_model(dm.slow_model(width=1024, repeats=60), "--max-batch-size", "1")
    payloads = [{"x": dm.flight_rows(1)["distance"]}]
    run = drive(Target(server.url, MODEL, "1"), payloads, [60.0], 3.0, 10.0, tmp_path, server.process.pid)
    phase = summarize(run.phases[0])
    assert pacing_shortfall(phase, tolerance=0.1) is None, phase
    breaches = slo_breaches(phase, Slo(p99_ms=20, error_rate=0.01))
    assert breaches and "p99" in breaches[0] and "> SLO 20 ms at 60 req/s" in breaches[0], phase


def test_a_leaking_server_fails_the_memory_judgement(tmp_path):
    port = free_port()
    leaking = Path(__file__).with_name("leaking_server.py")
    server = subprocess.Popen([sys.executable, str(leaking), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: server.stdout.readline().startswith("serving"), timeout=30, what="leaking server")
        payloads = [{"x": dm.flight_rows(1)["distance"]}]
        run = drive(Target(f"127.0.0.1:{port}", MODEL, "1"), payloads, [100.0], 3.0, 5.0, tmp_path, server.pid)
    finally:
        server.kill()
        server.wait(10)
    assert summarize(run.phases[0]).errors == {}
    trend = rss_trend(run.rss_samples, warmup_s=0.5)
    words = memory_growth(trend, max_growth_mib=16)
    assert trend.growth_mib > 16 and words and "memory is not flat" in words
