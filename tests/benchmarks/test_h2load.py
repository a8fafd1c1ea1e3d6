"""The benchmark's raw HTTP/2 gRPC client against a real server: replies are real ModelInfer
responses, and refused calls count as failures (so a benchmark cannot count errors as throughput)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from benchmarks import h2load
from benchmarks.serving_bench import grpc_payload
from serving import demo_models as dm
from serving.server import ServeConfig
from tests.serving.support import MODEL, RunningServer, free_port, local_predict

pytestmark = pytest.mark.timeout(120)
TOKEN = "h2-token"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return dm.save(dm.flight_model(seed=0), tmp_path_factory.mktemp("h2") / "flight.onnx")


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    running = RunningServer(
        ServeConfig(
            host="127.0.0.1",
            port=free_port(),
            metrics_port=-1,
            http_port=-1,
            model_name=MODEL,
            model_path=str(model_path),
            token=TOKEN,
            prediction_log_sample_rate=0,
            cache_dir=str(tmp_path_factory.mktemp("cache")),
        )
    )
    running.wait_ready()
    yield running
    running.stop()


def call_once(server, message: bytes, token: str | None) -> bytes | None:
    async def run():
        connection = await h2load.connect("127.0.0.1", server.port, message, token)
        try:
            return await connection.call()
        finally:
            connection.transport.close()

    return asyncio.run(run())


def test_a_call_returns_the_servers_reply(server, model_path):
    rows = dm.flight_rows(64, seed=3)
    reply = pb.ModelInferResponse.FromString(call_once(server, grpc_payload(rows), TOKEN))
    assert reply.model_name == MODEL and list(reply.outputs[0].shape) == [64, 1]
    got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(64, 1)
    np.testing.assert_allclose(got, local_predict(model_path, rows)[0], rtol=1e-5)


def test_refused_calls_are_failures(server):
    assert call_once(server, grpc_payload(dm.flight_rows(1)), "wrong-token") is None
    assert call_once(server, pb.ModelInferRequest(model_name="missing").SerializeToString(), TOKEN) is None


def test_load_counts_successes_and_failures(server):
    good = asyncio.run(h2load.load(f"127.0.0.1:{server.port}", grpc_payload(dm.flight_rows(1)), 8, 0.5, TOKEN))
    assert len(good[0]) > 8 and good[1] == 0
    bad = asyncio.run(h2load.load(f"127.0.0.1:{server.port}", grpc_payload(dm.flight_rows(1)), 4, 0.3, None))
    assert bad[0] == [] and bad[1] > 0
