"""Dynamic batching: rows from concurrent requests run through the model together.

What is queued at the end of the current event-loop turn runs as one batch, so requests that arrived
together share one `session.run` and a lone request costs one loop turn (requests gRPC is still
reading are invisible, so "is another in flight?" would always answer no). It waits, at most
`max_queue_delay_us`, only while the previous batch held more requests than are queued now: those
callers are likely about to send again. A cheap batch runs inline on the event loop (a thread
hand-off costs more than a tiny model); an expensive one on the model's compute thread (ONNX Runtime
releases the GIL). A full queue, or bytes over the server's `QueueBudget`, rejects at once with
`QueueFull`. Any exception inside a batch fails that batch's callers only; a caller that gives up
leaves the queue; `stalled_s()` feeds health checks and `drain(timeout)` answers what is left
`ServerNotReady`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.errors import QueueFull, ServerNotReady
from serving.queue_budget import QueueBudget

log = logging.getLogger("serving.batching")

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
    __slots__ = ("feeds", "rows", "nbytes", "future", "enqueued_ns")

    def __init__(self, feeds, rows, nbytes, future, enqueued_ns):
        self.feeds = feeds
        self.rows = rows
        self.nbytes = nbytes
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
        budget: QueueBudget | None = None,
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
        self._budget = budget or QueueBudget()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._busy = False  # a dispatch is scheduled, waiting, or a batch is computing
        self._running: list[_Pending] | None = None  # the batch computing now
        self._running_since_ns = 0
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
        nbytes = sum(a.nbytes for a in feeds.values())
        self._budget.take(nbytes)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        queue.append(_Pending(feeds, rows, nbytes, future, time.perf_counter_ns()))
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

    def stalled_s(self) -> float:
        """Seconds without progress: how long the running batch has computed, or the oldest request
        has waited when nothing runs (0 when idle). Health checks compare it with their limit."""
        now = time.perf_counter_ns()
        if self._running is not None:
            return (now - self._running_since_ns) / 1e9
        queue = self._queue
        return (now - queue[0].enqueued_ns) / 1e9 if queue else 0.0

    def _learn(self, rows: int, compute_ns: int) -> None:
        # Exponential averages of the fixed and per-row costs decide where the next batch runs.
        if rows == 1:
            self._fixed_ns = 0.8 * self._fixed_ns + 0.2 * max(0.0, compute_ns - self._row_ns)
        elif rows > 1:
            self._row_ns = 0.8 * self._row_ns + 0.2 * max(0.0, (compute_ns - self._fixed_ns) / rows)

    def _take_batch(self) -> tuple[list[_Pending], int]:
        """Pop the next batch, skipping callers that gave up (their future is already done)."""
        queue = self._queue
        batch: list[_Pending] = []
        rows = 0
        while queue and (not batch or rows + queue[0].rows <= self.max_batch_size):
            pending = queue.popleft()
            if pending.future.done():
                self._budget.give(pending.nbytes)
                continue
            rows += pending.rows
            batch.append(pending)
        return batch, rows

    def _dispatch(self) -> None:
        self._timer = None
        batch: list[_Pending] = []
        try:
            queue = self._queue
            if queue and self._delay_ns and len(queue) < self._last_requests:
                now = time.perf_counter_ns()
                waited = now - queue[0].enqueued_ns
                if waited < self._delay_ns and sum(p.rows for p in queue) < self.max_batch_size:
                    self._wait_for = self._last_requests
                    self._timer = self._loop.call_later((self._delay_ns - waited) / 1e9, self._dispatch)
                    return
            batch, rows = self._take_batch()
            if not batch:
                self._set_idle()
                return
            self._last_requests = len(batch)
            self._running, self._running_since_ns = batch, time.perf_counter_ns()
            if self._fixed_ns + self._row_ns * rows <= self._inline_budget_ns:
                try:
                    result = self._compute(batch, rows)
                except Exception as exc:
                    self._complete(batch, rows, None, exc)
                else:
                    self._complete(batch, rows, result, None)
                return
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
            work = self._executor.submit(self._compute, batch, rows)
            loop = self._loop

            def done(work):
                error = work.exception()
                loop.call_soon_threadsafe(self._complete, batch, rows, None if error else work.result(), error)

            work.add_done_callback(done)
        except Exception as exc:  # a bug in gathering: fail this batch, never the batcher
            log.error("batch dispatch failed", exc_info=True)
            self._complete(batch, sum(p.rows for p in batch), None, exc)

    def _compute(self, batch: list[_Pending], rows: int):
        start = time.perf_counter_ns()
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            first = batch[0].feeds
            feeds = {name: np.concatenate([p.feeds[name] for p in batch]) for name in first}
        outputs = self._run(feeds)
        return outputs, time.perf_counter_ns() - start

    def _complete(self, batch: list[_Pending], rows: int, result, error) -> None:
        if self._running is batch:
            self._running = None
        try:
            if error is None:
                self._deliver(batch, rows, result)
        except Exception as exc:  # slicing or accounting failed: the callers still get an answer
            log.error("batch completion failed", exc_info=True)
            error = exc
        finally:
            for pending in batch:
                self._budget.give(pending.nbytes)
                if error is not None and not pending.future.done():
                    pending.future.set_exception(error)
            if self._queue:
                # Let the loop run the callers just answered (and admit new requests) first.
                self._loop.call_soon(self._dispatch)
            else:
                self._set_idle()

    def _deliver(self, batch: list[_Pending], rows: int, result) -> None:
        outputs, compute_ns = result
        self._learn(rows, compute_ns)
        if self._on_batch is not None:
            self._on_batch(rows, compute_ns)
        dispatched_ns = self._running_since_ns
        results = []
        start = 0
        single = len(batch) == 1
        for pending in batch:  # slice every caller's rows before answering any of them
            stop = start + pending.rows
            sliced = outputs if single else [out[start:stop] for out in outputs]
            start = stop
            results.append(BatchResult(sliced, dispatched_ns - pending.enqueued_ns, compute_ns, rows))
        for pending, answer in zip(batch, results, strict=True):
            if not pending.future.done():  # the caller may have been cancelled
                pending.future.set_result(answer)

    def _set_idle(self) -> None:
        self._busy = False
        if self._idle is not None:
            self._idle.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Refuse new requests and finish the queued ones; after `timeout` seconds answer what is
        left with `ServerNotReady` (UNAVAILABLE: clients retry another replica). True if all finished."""
        self._closed = True
        finished = True
        if self._busy:
            if self._idle is None:
                self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                finished = False
                self.abort(ServerNotReady("server is shutting down"))
        if self._executor is not None:
            # A batch stuck in the model cannot be interrupted; its thread is left behind.
            self._executor.shutdown(wait=False, cancel_futures=True)
        return finished

    def abort(self, error: Exception) -> None:
        """Answer every queued and running caller with `error` now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in self._queue:
            self._budget.give(pending.nbytes)
        waiting = list(self._queue) + (self._running or [])
        self._queue.clear()
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(error)
        if self._running is None:
            self._set_idle()
