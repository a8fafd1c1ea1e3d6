"""Statistics and Prometheus metrics.

The hot path only bumps plain integers in `ModelStats` (one object per model version); nothing is
locked or formatted per request. The same numbers answer the ModelStatistics RPC and, at scrape
time, become Prometheus metrics: Triton's names where Triton has an equivalent
(`nv_inference_request_success`, `nv_inference_queue_duration_us`, ...) and `mlops_serve_*`
histograms for queue time, compute time, request time and batch size.

With several worker processes each worker writes a snapshot of its numbers to a shared folder
every second (and on shutdown); the parent's `/metrics` sums them.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest

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
        return {
            "models": [m.to_dict() for m in models],
            "swaps": swaps,
            "swap_failures": swap_failures,
            "unknown_model_failures": dict(self.unknown_model_failures),
            "log": {
                "written": self.log_written,
                "dropped": dict(self.log_dropped),
                "evicted_bytes": self.log_evicted_bytes,
            },
            "loaded": list(self.loaded()),
            "registry": self.registry(),
        }


# --- exposition ---------------------------------------------------------------------------------

_TRITON_COUNTERS = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda m: m["success"][0],
    ),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", lambda m: m["fail"][0]),
    ("nv_inference_count", "Number of inferences performed (a batch of n counts n)", lambda m: m["inference_count"]),
    ("nv_inference_exec_count", "Number of model executions performed (batches)", lambda m: m["execution_count"]),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda m: m["success"][1] // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda m: m["queue"][1] // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda m: m["compute_input_ns"] // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda m: m["compute_infer"][1] // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative compute output duration in microseconds",
        lambda m: m["compute_output_ns"] // 1000,
    ),
)

_HISTOGRAMS = (
    ("mlops_serve_request_duration_seconds", "Inference request time in the server", "request", TIME_BUCKETS),
    ("mlops_serve_queue_duration_seconds", "Time requests wait in the batching queue", "queue", TIME_BUCKETS),
    ("mlops_serve_compute_duration_seconds", "Model execution time per batch", "compute", TIME_BUCKETS),
    ("mlops_serve_batch_size", "Rows per model execution", "batch", BATCH_BUCKETS),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def merge_snapshots(snapshots: list[dict]) -> dict:
    """Sum the snapshots of several workers into one of the same shape."""
    if len(snapshots) == 1:
        return snapshots[0]
    models: dict[tuple[str, str], dict] = {}
    merged = {
        "models": [],
        "swaps": {},
        "swap_failures": [],
        "unknown_model_failures": {},
        "log": {"written": 0, "dropped": {}, "evicted_bytes": 0},
        "loaded": [],
        # Every worker reads the one mirror's counters: report the freshest, never a sum.
        "registry": max(
            (s["registry"] for s in snapshots if s.get("registry")), key=lambda r: r["polls"], default=None
        ),
    }
    failures: dict[tuple[str, str], int] = {}
    loaded = set()
    for snap in snapshots:
        for m in snap["models"]:
            key = (m["name"], m["version"])
            if key not in models:
                models[key] = json.loads(json.dumps(m))
                continue
            into = models[key]
            for k in ("success", "fail", "queue", "compute_infer"):
                into[k] = [a + b for a, b in zip(into[k], m[k], strict=True)]
            for k in ("pending", "compute_input_ns", "compute_output_ns", "inference_count", "execution_count"):
                into[k] += m[k]
            into["last_inference_ms"] = max(into["last_inference_ms"], m["last_inference_ms"])
            for reason, n in m["fail_reasons"].items():
                into["fail_reasons"][reason] = into["fail_reasons"].get(reason, 0) + n
            for size, (count, ns) in m["batch_stats"].items():
                have = into["batch_stats"].setdefault(size, [0, 0])
                have[0] += count
                have[1] += ns
            for h, data in m["hist"].items():
                into["hist"][h]["counts"] = [
                    a + b for a, b in zip(into["hist"][h]["counts"], data["counts"], strict=True)
                ]
                into["hist"][h]["sum"] += data["sum"]
        for model, n in snap["swaps"].items():
            merged["swaps"][model] = merged["swaps"].get(model, 0) + n
        for model, reason, n in snap["swap_failures"]:
            failures[(model, reason)] = failures.get((model, reason), 0) + n
        for code, n in snap["unknown_model_failures"].items():
            merged["unknown_model_failures"][code] = merged["unknown_model_failures"].get(code, 0) + n
        merged["log"]["written"] += snap["log"]["written"]
        for reason, n in snap["log"]["dropped"].items():
            merged["log"]["dropped"][reason] = merged["log"]["dropped"].get(reason, 0) + n
        merged["log"]["evicted_bytes"] += snap["log"]["evicted_bytes"]
        for entry in snap["loaded"]:
            loaded.add((entry["model"], entry["version"], entry["alias"]))
    merged["models"] = list(models.values())
    merged["swap_failures"] = [[m, r, n] for (m, r), n in failures.items()]
    merged["loaded"] = [{"model": m, "version": v, "alias": a} for m, v, a in sorted(loaded)]
    return merged


def render(snapshot: dict, supervisor: dict | None = None) -> bytes:
    """Prometheus text exposition of one (merged) snapshot and of the workers' health."""
    supervisor = supervisor or {"workers": [{"index": 0, "ready": True, "heartbeat_age_s": 0.0}], "restarts": {}}
    out: list[str] = []
    models = snapshot["models"]
    for name, doc, get in _TRITON_COUNTERS:
        out.append(f"# HELP {name} {doc}\n# TYPE {name} counter\n")
        for m in models:
            if name == "nv_inference_request_failure":
                reasons = m["fail_reasons"] or {}
                for reason, n in sorted(reasons.items()):
                    out.append(f"{name}{_labels(model=m['name'], version=m['version'], reason=reason)} {n}\n")
                continue
            out.append(f"{name}{_labels(model=m['name'], version=m['version'])} {get(m)}\n")

    name = "nv_inference_pending_request_count"
    out.append(
        f"# HELP {name} Inference requests inside the server: decoding, queued or executing\n# TYPE {name} gauge\n"
    )
    for m in models:
        out.append(f"{name}{_labels(model=m['name'], version=m['version'])} {m['pending']}\n")

    families = []
    for name, doc, key, bounds in _HISTOGRAMS:
        family = HistogramMetricFamily(name, doc, labels=["model", "version"])
        for m in models:
            data = m["hist"][key]
            cumulative, buckets = 0, []
            for bound, count in zip([*bounds, float("inf")], data["counts"], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            family.add_metric([m["name"], m["version"]], buckets, data["sum"])
        families.append(family)

    loaded = GaugeMetricFamily(
        "mlops_serve_model_version_loaded",
        "1 for each model version loaded, by alias",
        labels=["model", "version", "alias"],
    )
    for entry in snapshot["loaded"]:
        loaded.add_metric([entry["model"], entry["version"], entry["alias"]], 1)
    families.append(loaded)

    swaps = CounterMetricFamily("mlops_serve_model_swaps", "Model version swaps completed", labels=["model"])
    for model, n in snapshot["swaps"].items():
        swaps.add_metric([model], n)
    families.append(swaps)
    failed = CounterMetricFamily(
        "mlops_serve_model_swap_failures",
        "Model versions refused (corrupt, changed signature, failed warm-up)",
        labels=["model", "reason"],
    )
    for model, reason, n in snapshot["swap_failures"]:
        failed.add_metric([model, reason], n)
    families.append(failed)
    registry = snapshot.get("registry")
    if registry:
        from prometheus_client.core import SummaryMetricFamily

        polls = CounterMetricFamily("mlops_serve_registry_polls", "Registry polls by the registry mirror")
        polls.add_metric([], registry["polls"])
        poll_failures = CounterMetricFamily(
            "mlops_serve_registry_poll_failures", "Registry polls that met an unreachable registry or a failed download"
        )
        poll_failures.add_metric([], registry["failures"])
        poll_duration = SummaryMetricFamily(
            "mlops_serve_registry_poll_duration_seconds",
            "Time a registry poll takes, downloads included",
            count_value=registry["polls"],
            sum_value=registry["duration_seconds"],
        )
        last_success = GaugeMetricFamily(
            "mlops_serve_registry_last_success_timestamp_seconds", "Unix time of the last registry poll without errors"
        )
        if registry["last_success"] is not None:
            last_success.add_metric([], registry["last_success"])
        stale = GaugeMetricFamily(
            "mlops_serve_registry_alias_stale",
            "1 while an alias serves a version the registry does not confirm (outage, alias gone, new version refused)",
            labels=["alias"],
        )
        for alias, value in sorted(registry["stale"].items()):
            stale.add_metric([alias], value)
        families += [polls, poll_failures, poll_duration, last_success, stale]
    unknown = CounterMetricFamily(
        "mlops_serve_rejected_requests", "Inference requests refused before reaching a model", labels=["code"]
    )
    for code, n in snapshot["unknown_model_failures"].items():
        unknown.add_metric([code], n)
    families.append(unknown)
    log_written = CounterMetricFamily("mlops_serve_prediction_log_records", "Prediction log records written")
    log_written.add_metric([], snapshot["log"]["written"])
    families.append(log_written)
    log_dropped = CounterMetricFamily(
        "mlops_serve_prediction_log_dropped",
        "Prediction log records lost, by reason (buffer_full, write_error)",
        labels=["reason"],
    )
    for reason, n in sorted(snapshot["log"]["dropped"].items()):
        log_dropped.add_metric([reason], n)
    families.append(log_dropped)
    log_evicted = CounterMetricFamily(
        "mlops_serve_prediction_log_evicted_bytes", "Closed prediction log segments deleted by the retention limit"
    )
    log_evicted.add_metric([], snapshot["log"]["evicted_bytes"])
    families.append(log_evicted)
    families.extend(_worker_families(supervisor))

    class _Families:
        def collect(self):
            return families

    return "".join(out).encode() + generate_latest(_Families())


def _worker_families(supervisor: dict) -> list:
    workers = supervisor["workers"]
    count = GaugeMetricFamily("mlops_serve_workers", "Worker processes serving the gRPC port")
    count.add_metric([], len(workers))
    ready = GaugeMetricFamily("mlops_serve_worker_ready", "1 while a worker is ready to serve", labels=["worker"])
    age = GaugeMetricFamily(
        "mlops_serve_worker_heartbeat_age_seconds",
        "Seconds since a worker's event loop last reported; grows without bound while it is wedged",
        labels=["worker"],
    )
    for worker in workers:
        ready.add_metric([str(worker["index"])], 1 if worker["ready"] else 0)
        if worker["heartbeat_age_s"] is not None:
            age.add_metric([str(worker["index"])], worker["heartbeat_age_s"])
    restarts = CounterMetricFamily(
        "mlops_serve_worker_restarts", "Workers restarted by the parent, by reason (exited, wedged)", labels=["reason"]
    )
    for reason, n in sorted(supervisor["restarts"].items()):
        restarts.add_metric([reason], n)
    return [count, ready, age, restarts]


class SnapshotPublisher(threading.Thread):
    """A worker's thread that writes its snapshot to `folder/worker-<pid>.json` every `interval` s."""

    def __init__(self, stats: ServerStats, folder: Path, interval: float = 1.0):
        super().__init__(name="metrics-snapshot", daemon=True)
        self._stats = stats
        self._path = Path(folder) / f"worker-{os.getpid()}.json"
        self._interval = interval
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            self.publish()

    def publish(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._stats.snapshot()))
        os.replace(tmp, self._path)

    def stop(self) -> None:
        self._stop.set()
        self.publish()


def read_snapshots(folder: Path) -> list[dict]:
    snapshots = []
    for path in sorted(Path(folder).glob("worker-*.json")):
        try:
            snapshots.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a worker is replacing it right now; the next scrape gets it
    return snapshots
