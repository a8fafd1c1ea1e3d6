"""The dynamic batcher: it never waits when nothing else is coming, gathers concurrent requests,
hands each caller its own rows back, and bounds its queue."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving import demo_models as dm
from serving.batching import DynamicBatcher
from serving.errors import QueueFull
from tests.serving.support import infer_inputs, local_predict, served_session

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def session(model_files):
    return served_session(model_files["flight_v1"])


def make_batcher(session, **kwargs) -> DynamicBatcher:
    return DynamicBatcher(lambda feeds: session.run(["probability"], feeds), **kwargs)


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_lone_request_never_waits_for_the_queue_delay(session):
    async def run():
        batcher = make_batcher(session, max_batch_size=64, max_queue_delay_us=10_000_000)  # 10 s
        future = batcher.submit(dm.flight_rows(1), 1)
        await turns()
        # Done within a few loop turns: no timer was armed for the 10 s delay.
        assert future.done()
        return future.result()

    result = asyncio.run(run())
    assert result.batch_size == 1 and result.outputs[0].shape == (1, 1)


def test_concurrent_requests_share_a_batch_and_get_their_own_rows(session, model_files):
    async def run():
        batcher = make_batcher(session, max_batch_size=64)
        rows = [dm.flight_rows(n, seed=n) for n in (1, 3, 2, 5)]
        futures = [batcher.submit(r, len(r["hour"])) for r in rows]  # all in one loop turn
        results = await asyncio.gather(*futures)
        return rows, results

    rows, results = asyncio.run(run())
    assert {r.batch_size for r in results} == {11}  # one session.run for all four
    for sent, result in zip(rows, results, strict=True):
        np.testing.assert_allclose(result.outputs[0], local_predict(model_files["flight_v1"], sent)[0], rtol=1e-6)


def test_batches_respect_the_maximum_batch_size(session):
    async def run():
        batcher = make_batcher(session, max_batch_size=4)
        futures = [batcher.submit(dm.flight_rows(3, seed=i), 3) for i in range(3)]
        return await asyncio.gather(*futures)

    assert [r.batch_size for r in asyncio.run(run())] == [3, 3, 3]


def test_waits_only_while_more_requests_are_expected(session):
    async def run():
        batcher = make_batcher(session, max_batch_size=64, max_queue_delay_us=10_000_000)
        await asyncio.gather(*[batcher.submit(dm.flight_rows(1), 1) for _ in range(3)])  # a batch of 3
        first = batcher.submit(dm.flight_rows(1), 1)
        await turns()
        assert not first.done()  # the last batch had 3 requests: it waits for the others
        second, third = batcher.submit(dm.flight_rows(1), 1), batcher.submit(dm.flight_rows(1), 1)
        await turns()
        assert first.done() and second.done() and third.done()  # 3 arrived: no more waiting
        return first.result()

    assert asyncio.run(run()).batch_size == 3


def test_full_queue_refuses_at_once(session):
    async def run():
        batcher = make_batcher(session, max_batch_size=1, capacity=2)
        accepted = [batcher.submit(dm.flight_rows(1), 1) for _ in range(2)]
        with pytest.raises(QueueFull):
            batcher.submit(dm.flight_rows(1), 1)
        await asyncio.gather(*accepted)
        await batcher.drain()
        with pytest.raises(QueueFull):  # a drained batcher takes nothing more
            batcher.submit(dm.flight_rows(1), 1)

    asyncio.run(run())


def test_server_batches_concurrent_requests(serve, model_files):
    """Through the server: while one batch computes, concurrent requests queue and share the next."""
    server = serve(model_name="slow", model_path=str(model_files["slow"]), max_batch_size=64)
    sent = [np.full((2, 1), i + 1, np.float32) for i in range(24)]

    async def burst():
        import tritonclient.grpc.aio as aioclient

        client = aioclient.InferenceServerClient(server.url)
        try:
            return await asyncio.gather(*[client.infer("slow", infer_inputs({"x": x})) for x in sent])
        finally:
            await client.close()

    results = asyncio.run(burst())
    for x, result in zip(sent, results, strict=True):
        np.testing.assert_allclose(result.as_numpy("y"), local_predict(model_files["slow"], {"x": x})[0], rtol=1e-5)
    stats = server.client().get_inference_statistics("slow").model_stats[0]
    assert stats.inference_count == 48
    assert stats.execution_count < 24  # some requests shared a session.run


def test_server_batches_concurrent_requests_to_a_cheap_model(serve, model_files):
    """A model of tens of microseconds runs inline; concurrent callers still share session.runs."""
    server = serve(model_path=str(model_files["flight_v1"]), max_batch_size=64)
    sent = [dm.flight_rows(1, seed=i) for i in range(64)]

    async def burst():
        import tritonclient.grpc.aio as aioclient

        client = aioclient.InferenceServerClient(server.url)
        try:
            return await asyncio.gather(*[client.infer(server.config.model_name, infer_inputs(x)) for x in sent])
        finally:
            await client.close()

    results = asyncio.run(burst())
    for x, result in zip(sent, results, strict=True):
        np.testing.assert_allclose(
            result.as_numpy("probability"), local_predict(model_files["flight_v1"], x)[0], rtol=1e-5
        )
    stats = server.client().get_inference_statistics(server.config.model_name).model_stats[0]
    assert stats.inference_count == 64
    assert stats.execution_count < 64  # some requests shared a session.run
