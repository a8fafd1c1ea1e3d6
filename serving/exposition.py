"""Prometheus text exposition of a (merged) `serving.metrics` snapshot and of the workers' health.

Triton's names where Triton has an equivalent (`nv_inference_request_success`, ...), `mlops_serve_*`
for the rest; built at scrape time, never on the request path.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest

from serving.metrics import BATCH_BUCKETS, TIME_BUCKETS

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
    families.extend(_shipping_families(snapshot["log"]))
    families.extend(_worker_families(supervisor))

    class _Families:
        def collect(self):
            return families

    return "".join(out).encode() + generate_latest(_Families())


def _shipping_families(log: dict) -> list:
    shipped = CounterMetricFamily(
        "mlops_serve_prediction_log_shipped_segments", "Closed prediction log segments uploaded to the artifact store"
    )
    shipped.add_metric([], log["shipped"])
    errors = CounterMetricFamily(
        "mlops_serve_prediction_log_ship_errors",
        "Failed uploads of prediction log segments, by reason (S3 error code, errno, exception); each is retried",
        labels=["reason"],
    )
    for reason, n in sorted(log["ship_errors"].items()):
        errors.add_metric([reason], n)
    pending = GaugeMetricFamily(
        "mlops_serve_prediction_log_pending_segments", "Closed prediction log segments waiting to be shipped"
    )
    pending.add_metric([], log["pending_segments"])
    return [shipped, errors, pending]


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
