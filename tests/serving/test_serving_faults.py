"""Faults a server meets in months of operation, injected for real: failures inside a batch, callers
that give up, a wedged event loop, a wedged worker, SIGTERM on a wedged server, oversized and
unauthenticated requests, an inference token used on the control plane."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from serving import demo_models as dm
from serving.batching import DynamicBatcher
from serving.errors import ServerNotReady
from serving.worker import HARD_STOP_MARGIN_S
from tests.serving.support import MODEL, http_get, infer_inputs, wait_until

pytestmark = pytest.mark.timeout(180)

WEDGE = 10**13  # loop iterations of the stall model: hours of ONNX Runtime work


@pytest.fixture(scope="module")
def stall_file(tmp_path_factory):
    return dm.save(dm.stall_model(), tmp_path_factory.mktemp("stall") / "stall.onnx")


def steps(*values: int) -> dict[str, np.ndarray]:
    return {"steps": np.array([[v] for v in values], np.int64)}


def echo_run(feeds):
    return [feeds["steps"].astype(np.float32)]


def burst(url: str, model: str, inputs, n: int) -> list:
    """`n` concurrent requests from one asyncio client; the replies or the errors, in order."""

    async def send():
        import tritonclient.grpc.aio as aioclient

        client = aioclient.InferenceServerClient(url)
        try:
            return await asyncio.gather(*[client.infer(model, inputs) for _ in range(n)], return_exceptions=True)
        finally:
            await client.close()

    return asyncio.run(send())


# --- the batcher ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["model raises", "metrics callback raises", "outputs cannot be sliced"])
def test_a_failure_inside_a_batch_fails_its_callers_and_the_next_batch_runs(fault):
    broken = {"on": True}

    def run(feeds):
        if broken["on"] and fault == "model raises":
            raise RuntimeError("model exploded")
        if broken["on"] and fault == "outputs cannot be sliced":
            return [None]
        return echo_run(feeds)

    def on_batch(rows, ns):
        if broken["on"] and fault == "metrics callback raises":
            raise ZeroDivisionError("accounting bug")

    async def scenario():
        batcher = DynamicBatcher(run, max_batch_size=8, on_batch=on_batch)
        failed = await asyncio.gather(batcher.submit(steps(1), 1), batcher.submit(steps(2), 1), return_exceptions=True)
        broken["on"] = False
        answered = await asyncio.wait_for(batcher.submit(steps(7), 1), 2)
        assert await batcher.drain(2), "the batcher stayed busy"
        return failed, answered

    failed, answered = asyncio.run(scenario())
    assert all(isinstance(f, Exception) for f in failed), failed
    assert answered.outputs[0].tolist() == [[7.0]]


def test_a_caller_that_gives_up_leaves_the_queue():
    release = threading.Event()
    batches = []

    def run(feeds):
        release.wait(10)
        batches.append(feeds["steps"].ravel().tolist())
        return echo_run(feeds)

    async def scenario():
        # A high cost estimate sends batches to the compute thread, so the loop stays free meanwhile.
        batcher = DynamicBatcher(run, max_batch_size=8, cost_ns=(1e9, 0.0))
        first = batcher.submit(steps(1), 1)
        await asyncio.sleep(0.05)  # the first batch is computing
        quitter = asyncio.ensure_future(asyncio.wait_for(batcher.submit(steps(2), 1), 0.05))
        stayer = batcher.submit(steps(3), 1)
        with pytest.raises(TimeoutError):
            await quitter
        release.set()
        await asyncio.wait_for(asyncio.gather(first, stayer), 5)

    asyncio.run(scenario())
    assert batches == [[1], [3]]  # the request whose deadline passed never reached the model


def test_a_stalled_batch_is_reported_and_drain_answers_unavailable():
    release = threading.Event()

    async def scenario():
        batcher = DynamicBatcher(lambda f: (release.wait(10), echo_run(f))[1], max_batch_size=1, cost_ns=(1e9, 0.0))
        running, queued = batcher.submit(steps(1), 1), batcher.submit(steps(2), 1)
        await asyncio.sleep(0.3)
        stalled = batcher.stalled_s()
        finished = await batcher.drain(timeout=0.2)
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        release.set()
        return stalled, finished, outcomes

    stalled, finished, outcomes = asyncio.run(scenario())
    assert stalled >= 0.25
    assert finished is False
    assert all(isinstance(o, ServerNotReady) for o in outcomes), outcomes


# --- deadlines and limits through the server --------------------------------------------------------


def test_a_request_past_its_deadline_is_not_computed(serve, model_files):
    server = serve(model_name="slow", model_path=str(model_files["slow"]), max_batch_size=64)
    big = infer_inputs({"x": np.ones((64, 1), np.float32)})
    x = infer_inputs({"x": np.ones((1, 1), np.float32)})

    async def scenario():
        import tritonclient.grpc.aio as aioclient

        client = aioclient.InferenceServerClient(server.url)
        try:
            busy = [asyncio.ensure_future(client.infer("slow", big)) for _ in range(6)]
            await asyncio.sleep(0.05)
            late = await asyncio.gather(client.infer("slow", x, client_timeout=0.05), return_exceptions=True)
            await asyncio.gather(*busy)
            return late[0]
        finally:
            await client.close()

    late = asyncio.run(scenario())
    assert isinstance(late, InferenceServerException) and late.status() == "StatusCode.DEADLINE_EXCEEDED"
    client = server.client()
    stats = client.get_inference_statistics("slow").model_stats[0]
    wait_until(lambda: client.get_inference_statistics("slow").model_stats[0].inference_stats.fail.count == 1, 5)
    assert stats.inference_count == 6 * 64  # the late request's row was never computed
    assert client.infer("slow", x).as_numpy("y").shape == (1, 1)


def test_oversized_and_over_budget_requests_are_resource_exhausted(serve, model_files):
    server = serve(
        model_name="slow",
        model_path=str(model_files["slow"]),
        max_batch_size=256,
        max_message_bytes=64 * 1024,
        max_queued_bytes=4 * 1024,
    )
    client = server.client()
    with pytest.raises(InferenceServerException) as err:
        client.infer("slow", infer_inputs({"x": np.ones((20_000, 1), np.float32)}))  # 80 kB > 64 kB
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"

    rows = infer_inputs({"x": np.ones((256, 1), np.float32)})  # 1 kB each: four fit in the budget
    outcomes = burst(server.url, "slow", rows, 20)
    refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
    assert refused and {r.status() for r in refused} == {"StatusCode.RESOURCE_EXHAUSTED"}
    assert any("4096 bytes" in r.message() for r in refused)
    assert client.infer("slow", rows).as_numpy("y").shape == (256, 1)  # the budget was given back


def test_concurrent_rpcs_are_capped(serve, model_files):
    server = serve(model_name="slow", model_path=str(model_files["slow"]), max_batch_size=64, max_concurrent_rpcs=2)
    outcomes = burst(server.url, "slow", infer_inputs({"x": np.ones((64, 1), np.float32)}), 12)
    refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
    assert refused and {r.status() for r in refused} == {"StatusCode.RESOURCE_EXHAUSTED"}
    assert len(refused) < 12


# --- tokens -----------------------------------------------------------------------------------------


def test_the_inference_token_cannot_touch_the_control_plane(serve, model_files):
    server = serve(model_path=str(model_files["flight_v1"]), token="infer-t", admin_token="admin-t")
    client = server.client()
    inference, admin = {"authorization": "Bearer infer-t"}, {"authorization": "Bearer admin-t"}
    assert client.infer(MODEL, infer_inputs(dm.flight_rows(1)), headers=inference).as_numpy("probability").shape
    for call in (client.unload_model, client.load_model):
        with pytest.raises(InferenceServerException) as err:
            call(MODEL, headers=inference)
        assert err.value.status() == "StatusCode.PERMISSION_DENIED"
    with pytest.raises(InferenceServerException) as err:
        client.get_model_repository_index()
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.is_model_ready(MODEL, headers=inference)  # nothing was unloaded
    assert [m.state for m in client.get_model_repository_index(headers=admin).models] == ["READY"]
    assert client.infer(MODEL, infer_inputs(dm.flight_rows(1)), headers=admin).as_numpy("probability").shape


def test_without_an_admin_token_the_control_plane_is_off(serve, model_files, caplog):
    with caplog.at_level(logging.WARNING, logger="serving.worker"):
        server = serve(model_path=str(model_files["flight_v1"]))
    assert any("NO INFERENCE TOKEN" in r.getMessage() for r in caplog.records)
    with pytest.raises(InferenceServerException) as err:
        server.client().unload_model(MODEL)
    assert err.value.status() == "StatusCode.PERMISSION_DENIED" and "admin token" in err.value.message()
    assert server.client().is_model_ready(MODEL)


def test_an_unauthenticated_call_is_refused_before_its_message_is_parsed(serve, model_files):
    server = serve(model_path=str(model_files["flight_v1"]), token="t")
    with grpc.insecure_channel(server.url) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff not a protobuf", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:  # the same bytes with the token are parsed, and fail
            raw(b"\xff\xff\xff not a protobuf", timeout=5, metadata=(("authorization", "Bearer t"),))
        assert err.value.code() != grpc.StatusCode.UNAUTHENTICATED
        request = pb.ModelInferRequest(model_name=MODEL).SerializeToString()
        with pytest.raises(grpc.RpcError) as err:
            raw(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- wedged processes -------------------------------------------------------------------------------


def wedge(url: str) -> threading.Thread:
    """Send the request that keeps the model busy for hours; its answer (an error) does not matter."""

    def send():
        with contextlib.suppress(InferenceServerException):
            grpcclient.InferenceServerClient(url).infer("stall", infer_inputs(steps(WEDGE)), client_timeout=60)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_wedged_event_loop_fails_health_and_sigterm_still_exits_in_time(serve_process, stall_file):
    grace = 2.0
    server = serve_process(
        ["--model-path", str(stall_file), "--model-name", "stall", "--stall-timeout", "1", "--grace-period", str(grace)]
    )
    server.wait_ready()
    assert http_get(server.http + "/health")[0] == 200
    wedge(server.url)
    status, body = wait_until(
        lambda: (lambda r: r if r[0] == 503 else None)(http_get(server.http + "/health")), 10, what="/health 503"
    )
    assert "event loop stalled" in body
    assert http_get(server.http + "/ready")[0] == 503
    start = time.monotonic()
    code = server.terminate(timeout=grace + HARD_STOP_MARGIN_S + 10)
    took = time.monotonic() - start
    assert took < grace + HARD_STOP_MARGIN_S + 2, f"SIGTERM took {took:.1f}s"
    assert code == 1
    assert "did not stop within the grace period" in server.logs()


def test_a_wedged_worker_is_reported_and_restarted(serve_process, stall_file):
    grace = 2.0
    server = serve_process(
        [
            "--model-path",
            str(stall_file),
            "--model-name",
            "stall",
            "--workers",
            "2",
            "--stall-timeout",
            "1",
            "--grace-period",
            str(grace),
        ]
    )
    server.wait_ready(90)
    wedge(server.url)
    wait_until(lambda: http_get(server.http + "/ready")[0] == 503, 10, interval=0.05, what="/ready 503")
    restarted = re.compile(r'mlops_serve_worker_restarts_total\{reason="wedged"\} 1\.0')
    wait_until(lambda: restarted.search(http_get(server.http + "/metrics")[1]), 20, what="a wedged-worker restart")
    server.wait_ready(90)
    metrics = http_get(server.http + "/metrics")[1]
    assert (
        'mlops_serve_worker_ready{worker="0"} 1.0' in metrics and 'mlops_serve_worker_ready{worker="1"} 1.0' in metrics
    )
    client = grpcclient.InferenceServerClient(server.url)
    for i in range(20):  # both workers answer (SO_REUSEPORT spreads connections)
        fresh = grpcclient.InferenceServerClient(server.url)
        assert fresh.infer("stall", infer_inputs(steps(i))).as_numpy("y").tolist() == [[float(i)]]
    assert client.is_server_ready()
    assert "worker wedged; killing and restarting it" in server.logs()

    wedge(server.url)  # and SIGTERM on a wedged worker still ends in time
    time.sleep(0.3)
    start = time.monotonic()
    server.terminate(timeout=grace + HARD_STOP_MARGIN_S + 15)
    took = time.monotonic() - start
    assert took < grace + HARD_STOP_MARGIN_S + 3, f"SIGTERM took {took:.1f}s"
