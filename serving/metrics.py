"""Statistics: what the server counts, and the snapshots its `/metrics` is built from.

The hot path only bumps plain integers in `ModelStats` (one object per model version); nothing is
locked or formatted per request. The same numbers answer the ModelStatistics RPC and, at scrape
time, become Prometheus metrics (`serving.exposition`).

With several worker processes the parent's `/metrics` sums the workers' snapshots (serving.worker_snapshots).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# Seconds; covers a 20 us tiny-model run up to a one-second pile-up.
TIME_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """A cumulative-at-export histogram: `observe` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def to_dict(self) -> dict:
        return {"counts": list(self.counts), "sum": self.sum}


class ModelStats:
    """Triton-style statistics of one model version, updated on the event loop thread only."""

    def __init__(self, name: str, version: str):
        self.name = name
        self.version = version
        self.pending = 0  # requests inside the server right now (decoding, queued or computing)
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.fail_reasons: dict[str, int] = {}
        self.queue_count = 0
        self.queue_ns = 0
        self.input_ns = 0
        self.infer_count = 0
        self.infer_ns = 0
        self.output_ns = 0
        self.inference_count = 0  # rows
        self.execution_count = 0  # batches (session runs)
        self.last_inference_ms = 0
        self.batch_stats: dict[int, list[int]] = {}  # batch size -> [count, compute ns]
        self.request_hist = Histogram(TIME_BUCKETS)
        self.queue_hist = Histogram(TIME_BUCKETS)
        self.compute_hist = Histogram(TIME_BUCKETS)
        self.batch_hist = Histogram(BATCH_BUCKETS)

    def record_success(self, total_ns: int, input_ns: int, queue_ns: int, infer_ns: int, output_ns: int) -> None:
        self.success_count += 1
        self.success_ns += total_ns
        self.queue_count += 1
        self.queue_ns += queue_ns
        self.input_ns += input_ns
        self.infer_count += 1
        self.infer_ns += infer_ns
        self.output_ns += output_ns
        self.last_inference_ms = int(time.time() * 1000)
        self.request_hist.observe(total_ns / 1e9)
        self.queue_hist.observe(queue_ns / 1e9)

    def record_failure(self, total_ns: int, reason: str) -> None:
        self.fail_count += 1
        self.fail_ns += total_ns
        self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1

    def record_batch(self, rows: int, compute_ns: int) -> None:
        self.inference_count += rows
        self.execution_count += 1
        entry = self.batch_stats.get(rows)
        if entry is None:
            entry = self.batch_stats[rows] = [0, 0]
        entry[0] += 1
        entry[1] += compute_ns
        self.compute_hist.observe(compute_ns / 1e9)
        self.batch_hist.observe(rows)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "pending": self.pending,
            "success": [self.success_count, self.success_ns],
            "fail": [self.fail_count, self.fail_ns],
            "fail_reasons": dict(self.fail_reasons),
            "queue": [self.queue_count, self.queue_ns],
            "compute_input_ns": self.input_ns,
            "compute_infer": [self.infer_count, self.infer_ns],
            "compute_output_ns": self.output_ns,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "last_inference_ms": self.last_inference_ms,
            "batch_stats": {str(k): v for k, v in self.batch_stats.items()},
            "hist": {
                "request": self.request_hist.to_dict(),
                "queue": self.queue_hist.to_dict(),
                "compute": self.compute_hist.to_dict(),
                "batch": self.batch_hist.to_dict(),
            },
        }


@dataclass
class ServerStats:
    """Everything one worker process counts; `snapshot()` is what `/metrics` is built from."""

    models: dict[tuple[str, str], ModelStats] = field(default_factory=dict)
    swaps: dict[str, int] = field(default_factory=dict)  # model -> successful swaps
    swap_failures: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, reason)
    unknown_model_failures: dict[str, int] = field(default_factory=dict)  # gRPC code -> count
    log_written: int = 0
    log_dropped: dict[str, int] = field(default_factory=dict)  # reason -> prediction log records lost
    log_evicted_bytes: int = 0  # closed segments deleted by the retention limit
    log_shipped: int = 0  # closed segments this process uploaded to the artifact store
    log_ship_errors: dict[str, int] = field(default_factory=dict)  # reason -> failed upload attempts
    log_pending: Callable[[], int] = lambda: 0  # closed segments waiting in the folder the workers share
    loaded: Callable[[], Iterable[dict]] = lambda: ()  # the repository's loaded versions
    registry: Callable[[], dict | None] = lambda: None  # the registry mirror's poll status
    lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, name: str, version: str) -> ModelStats:
        key = (name, version)
        stats = self.models.get(key)
        if stats is None:
            with self.lock:
                stats = self.models.setdefault(key, ModelStats(name, version))
        return stats

    def in_flight(self) -> int:
        """Requests inside the server right now, over every model version."""
        with self.lock:
            return sum(m.pending for m in self.models.values())

    def record_log_drop(self, reason: str, records: int = 1) -> None:
        """Prediction log records lost: `buffer_full`, `write_error` (disk full, I/O error), ..."""
        with self.lock:
            self.log_dropped[reason] = self.log_dropped.get(reason, 0) + records

    def record_log_shipped(self, segments: int) -> None:
        with self.lock:
            self.log_shipped += segments

    def record_log_ship_error(self, reason: str) -> None:
        """A failed upload attempt: S3's error code, the errno name or the exception type."""
        with self.lock:
            self.log_ship_errors[reason] = self.log_ship_errors.get(reason, 0) + 1

    def record_swap(self, model: str) -> None:
        with self.lock:
            self.swaps[model] = self.swaps.get(model, 0) + 1

    def record_swap_failure(self, model: str, reason: str) -> None:
        with self.lock:
            key = (model, reason)
            self.swap_failures[key] = self.swap_failures.get(key, 0) + 1

    def snapshot(self) -> dict:
        with self.lock:
            models = list(self.models.values())
            swaps = dict(self.swaps)
            swap_failures = [[m, r, n] for (m, r), n in self.swap_failures.items()]
            shipped, ship_errors = self.log_shipped, dict(self.log_ship_errors)
        return {
            "models": [m.to_dict() for m in models],
            "swaps": swaps,
            "swap_failures": swap_failures,
            "unknown_model_failures": dict(self.unknown_model_failures),
            "log": {
                "written": self.log_written,
                "dropped": dict(self.log_dropped),
                "evicted_bytes": self.log_evicted_bytes,
                "shipped": shipped,
                "ship_errors": ship_errors,
                "pending_segments": self.log_pending(),
            },
            "loaded": list(self.loaded()),
            "registry": self.registry(),
        }
