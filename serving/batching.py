"""Dynamic batching: rows from concurrent requests run through the model together.

The batcher never waits when there is nothing to wait for. Every request is queued, and what is
queued at the end of the current event-loop turn runs as one batch: concurrent requests that
arrived together share one `session.run`, and a lone request costs one loop turn. (Asking "is
another request in flight?" when a request is decoded would always answer no, because each request
is decoded and run in one step of the loop; the requests gRPC is still reading are invisible.) It
waits (at most `max_queue_delay_us`) only while the previous batch held more requests than are
queued now: those callers are likely about to send again. A lone caller therefore never waits.

Where a batch runs depends on its expected cost. A cheap batch (a tiny model: tens of
microseconds) runs inline on the event loop, because handing it to a thread and back costs more
than the model. An expensive one runs on the model's compute thread (ONNX Runtime releases the
GIL), so the loop keeps decoding and queueing requests meanwhile. The queue is bounded: a full
queue rejects at once with `QueueFull` (RESOURCE_EXHAUSTED), so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.errors import QueueFull

RunFn = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


class BatchResult:
    """What one request gets back: its slice of each output and where its time went (ns)."""

    __slots__ = ("outputs", "queue_ns", "compute_ns", "batch_size")

    def __init__(self, outputs, queue_ns, compute_ns, batch_size):
        self.outputs = outputs
        self.queue_ns = queue_ns
        self.compute_ns = compute_ns
        self.batch_size = batch_size


class _Pending:
    __slots__ = ("feeds", "rows", "future", "enqueued_ns")

    def __init__(self, feeds, rows, future, enqueued_ns):
        self.feeds = feeds
        self.rows = rows
        self.future = future
        self.enqueued_ns = enqueued_ns


def run_direct(run: RunFn, feeds: dict[str, np.ndarray], rows: int) -> BatchResult:
    """No batcher: run one request inline (the cheapest path for a tiny model)."""
    start = time.perf_counter_ns()
    outputs = run(feeds)
    return BatchResult(outputs, 0, time.perf_counter_ns() - start, rows)


class DynamicBatcher:
    """Gathers queued requests of one model version into batches of at most `max_batch_size` rows."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        capacity: int = 1024,
        inline_budget_us: float = 1000.0,
        cost_ns: tuple[float, float] = (0.0, 0.0),
        on_batch: Callable[[int, int], None] | None = None,
        thread_name: str = "batcher",
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us
        self._delay_ns = int(max_queue_delay_us * 1000)
        self.capacity = capacity
        self._inline_budget_ns = inline_budget_us * 1000
        # Running estimate of a batch's compute time: fixed cost + cost per row (ns).
        self._fixed_ns, self._row_ns = cost_ns
        self._on_batch = on_batch  # (rows, compute_ns) after each batch, on the loop thread
        self._queue: collections.deque[_Pending] = collections.deque()
        self._busy = False  # a dispatch is scheduled, waiting, or a batch is computing
        self._timer: asyncio.TimerHandle | None = None
        self._wait_for = 0  # requests the pending wait hopes to gather
        self._last_requests = 1  # requests in the previous batch
        self._executor: ThreadPoolExecutor | None = None
        self._thread_name = thread_name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, feeds: dict[str, np.ndarray], rows: int) -> asyncio.Future:
        """Queue one request; the future resolves to its `BatchResult`. Call on the event loop."""
        if self._closed:
            raise QueueFull("model version is being unloaded")
        queue = self._queue
        if len(queue) >= self.capacity:
            raise QueueFull(f"inference queue is full ({self.capacity} requests)")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        queue.append(_Pending(feeds, rows, future, time.perf_counter_ns()))
        if not self._busy:
            self._busy = True
            if self._idle is not None:
                self._idle.clear()
            # Dispatch at the end of this loop turn: requests already decoded in this turn join
            # the batch, and nothing waits for requests that may never come.
            loop.call_soon(self._dispatch)
        elif self._timer is not None and len(queue) >= self._wait_for:
            self._timer.cancel()
            self._timer = None
            loop.call_soon(self._dispatch)
        return future

    def _learn(self, rows: int, compute_ns: int) -> None:
        # Exponential averages of the fixed and per-row costs decide where the next batch runs.
        if rows == 1:
            self._fixed_ns = 0.8 * self._fixed_ns + 0.2 * max(0.0, compute_ns - self._row_ns)
        else:
            self._row_ns = 0.8 * self._row_ns + 0.2 * max(0.0, (compute_ns - self._fixed_ns) / rows)
        if self._on_batch is not None:
            self._on_batch(rows, compute_ns)

    def _dispatch(self) -> None:
        self._timer = None
        queue = self._queue
        if not queue:
            self._set_idle()
            return
        now = time.perf_counter_ns()
        if self._delay_ns and len(queue) < self._last_requests:
            waited = now - queue[0].enqueued_ns
            if waited < self._delay_ns and sum(p.rows for p in queue) < self.max_batch_size:
                self._wait_for = self._last_requests
                self._timer = self._loop.call_later((self._delay_ns - waited) / 1e9, self._dispatch)
                return
        batch = [queue.popleft()]
        rows = batch[0].rows
        while queue and rows + queue[0].rows <= self.max_batch_size:
            pending = queue.popleft()
            rows += pending.rows
            batch.append(pending)
        self._last_requests = len(batch)
        if self._fixed_ns + self._row_ns * rows <= self._inline_budget_ns:
            try:
                result = self._compute(batch, rows)
            except Exception as exc:
                self._complete(batch, rows, now, None, exc)
            else:
                self._complete(batch, rows, now, result, None)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        work = self._executor.submit(self._compute, batch, rows)
        loop = self._loop

        def done(work):
            error = work.exception()
            loop.call_soon_threadsafe(self._complete, batch, rows, now, None if error else work.result(), error)

        work.add_done_callback(done)

    def _compute(self, batch: list[_Pending], rows: int):
        start = time.perf_counter_ns()
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            first = batch[0].feeds
            feeds = {name: np.concatenate([p.feeds[name] for p in batch]) for name in first}
        outputs = self._run(feeds)
        return outputs, time.perf_counter_ns() - start

    def _complete(self, batch: list[_Pending], rows: int, dispatched_ns: int, result, error) -> None:
        if error is not None:  # the model failed: every caller in the batch gets the error
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
        else:
            outputs, compute_ns = result
            self._learn(rows, compute_ns)
            start = 0
            single = len(batch) == 1
            for pending in batch:
                stop = start + pending.rows
                sliced = outputs if single else [out[start:stop] for out in outputs]
                start = stop
                if not pending.future.done():  # the caller may have been cancelled
                    pending.future.set_result(
                        BatchResult(sliced, dispatched_ns - pending.enqueued_ns, compute_ns, rows)
                    )
        if self._queue:
            # Let the loop run the callers just answered (and admit new requests) first.
            self._loop.call_soon(self._dispatch)
        else:
            self._set_idle()

    def _set_idle(self) -> None:
        self._busy = False
        if self._idle is not None:
            self._idle.set()

    async def drain(self) -> None:
        """Refuse new requests, finish the queued ones, then stop the compute thread."""
        self._closed = True
        if self._busy:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
