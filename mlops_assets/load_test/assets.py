"""load_test: the challenger served on a loopback server at 1x and 10x its declared peak, before live traffic.

The figures come from served requests (Locust driving mlops-serve, psutil reading the server); the blocking
`load_test_gate` refuses the version the `champion` alias when the SLO fails, memory grows or it costs too much.
"""

import tempfile
from pathlib import Path

import dagster as dg
import numpy as np

from mlops_assets.features.assets import load_features
from mlops_assets.load_test import plots
from mlops_assets.load_test.candidate_server import CandidateServer, registry_source
from mlops_assets.load_test.cost import Prices, replicas_needed, served_cost
from mlops_assets.load_test.driver import LoadRun, Target, drive
from mlops_assets.load_test.figures import Slo, rps_within_slo, shedding_begins_rps, summarize
from mlops_assets.load_test.memory import MIB, memory_growth, rss_trend
from mlops_assets.load_test.report import phase_table
from mlops_assets.load_test.verdict import refusals
from mlops_assets.metadata import readable
from mlops_assets.registry.assets import RegisteredVersion
from mlops_assets.training.onnx_export import onnx_feeds
from resources import ArtifactStore, MlflowRegistry
from resources.mlflow_registry import CHALLENGER

# The scorecard's in-process figure: onnxruntime CPU time alone, no server, no network, no batching queue.
MODEL_COMPUTE_TAG = "scorecard_cost_per_1k_usd_one_thread"


class LoadTestConfig(dg.Config):
    """The declared load and the SLO; the defaults fit the demo model on a 2-core laptop."""

    peak_rps: float = 20.0
    """Expected peak of live traffic, requests per second."""
    rows_per_request: int = 1
    """Flights per request at the peak; each row is one prediction."""
    slo_p99_ms: float = 100.0
    """p99 latency of answered requests, milliseconds, that must hold at every offered load."""
    slo_error_rate: float = 0.01
    """Share of requests that may fail (any status but OK, shedding included) at every offered load."""
    load_multipliers: list[float] = [1.0, 10.0]
    """Offered loads as multiples of peak_rps, in order; the first is the load the cost is priced at."""
    phase_seconds: float = 10.0
    """Seconds each offered load lasts."""
    call_timeout_s: float = 5.0
    """Deadline of each request; a request past it counts as DEADLINE_EXCEEDED."""
    pacing_tolerance: float = 0.1
    """How far (a fraction) the achieved arrival rate may stray from the offered one before the run is void."""
    max_rss_growth_mib: float = 32.0
    """Server RSS growth over the run, MiB, beyond which memory is not flat."""
    warmup_s: float = 2.0
    """Seconds of RSS samples at the start (model load, first allocations) left out of the flatness judgement."""
    vcpu_hour_usd: float = 0.04
    """Price of one vCPU for an hour (an on-demand cloud figure)."""
    gib_hour_usd: float = 0.005
    """Price of one GiB of memory for an hour."""
    budget_usd_per_1000_predictions: float | None = None
    """Most that 1,000 served predictions may cost; None: no budget."""
    staging_url: str | None = None
    """host:port of a staging server already serving the candidate; None starts one on loopback. A remote
    server's CPU and memory are not observed, so cost and flatness are then not judged."""
    server_args: list[str] = []
    """mlops-serve flags after the production settings (e.g. ["--workers", "2"] to match deploy/k8s)."""
    distinct_requests: int = 256
    """Requests sampled from the evaluation month's validated rows, which the generator picks from at random."""


def _payloads(store: ArtifactStore, month: str, config: LoadTestConfig) -> list[dict[str, np.ndarray]]:
    rows = load_features(store, [month])
    rng = np.random.default_rng(0)
    picks = rng.choice(len(rows), size=(config.distinct_requests, config.rows_per_request))
    return [onnx_feeds(rows.iloc[pick]) for pick in picks]


def _run(config: LoadTestConfig, payloads: list, registry: MlflowRegistry, version: str, folder: Path) -> LoadRun:
    rates = [config.peak_rps * multiplier for multiplier in config.load_multipliers]
    timing = {"duration_s": config.phase_seconds, "timeout_s": config.call_timeout_s, "folder": folder}
    if config.staging_url:
        target = Target(config.staging_url, registry.model_name, version)
        return drive(target, payloads, rates, server_pid=None, **timing)
    source = registry_source(registry.tracking_uri, registry.model_name, CHALLENGER)
    with CandidateServer(source, folder, tuple(config.server_args)) as server:
        target = Target(server.url, registry.model_name, version)
        return drive(target, payloads, rates, server_pid=server.process.pid, **timing)


def _log_to_mlflow(registry: MlflowRegistry, run_id: str, files: dict[str, bytes], metrics: dict) -> dict[str, str]:
    """The pictures and figures on the candidate's training run; returns each picture's MLflow page."""
    client = registry.client()
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            client.log_artifact(run_id, str(path), artifact_path="load_test")
    for key, value in metrics.items():
        if value is not None and np.isfinite(value):
            client.log_metric(run_id, f"load_test_{key}", float(value))
    return {name: registry.artifact_url(run_id, f"load_test/{name}") for name in files}


@dg.asset(group_name="load_test", kinds={"grpc", "locust"})
def load_test(
    context: dg.AssetExecutionContext,
    config: LoadTestConfig,
    registered_model: RegisteredVersion,
    store: ArtifactStore,
    registry: MlflowRegistry,
) -> dg.Output[dict]:
    """The approved challenger under its declared peak and 10x it: latency, errors, shedding, server memory and
    what 1,000 served predictions cost. load_test_gate keeps it from live traffic when these fail."""
    version = registered_model.version
    tags = registry.client().get_model_version(registry.model_name, version).tags
    if tags.get("promotion_decision") != "approved":
        reason = f"promotion_gate did not approve v{version}: it will not take traffic"
        return dg.Output({"tested": False, "version": version, "reason": reason}, metadata={"reason": reason})

    payloads = _payloads(store, registered_model.evaluation.evaluation_month, config)
    with tempfile.TemporaryDirectory() as tmp:
        run = _run(config, payloads, registry, version, Path(tmp))
    phases = [summarize(record) for record in run.phases]
    slo = Slo(p99_ms=config.slo_p99_ms, error_rate=config.slo_error_rate)
    trend = rss_trend(run.rss_samples, config.warmup_s) if run.rss_samples else None
    cost = None
    if trend is not None:
        rss_gib = float(np.median([rss for _, rss in run.rss_samples])) / MIB / 1024
        prices = Prices(vcpu_hour_usd=config.vcpu_hour_usd, gib_hour_usd=config.gib_hour_usd)
        priced = phases[0]
        cost = served_cost(
            priced.server_cpu_s, priced.requests, rss_gib, config.phase_seconds, config.rows_per_request, prices
        )
    within = rps_within_slo(phases, slo)
    memory_words = memory_growth(trend, config.max_rss_growth_mib) if trend else None
    reasons = refusals(phases, slo, config.pacing_tolerance, memory_words, cost, config.budget_usd_per_1000_predictions)
    compute_only = float(tags[MODEL_COMPUTE_TAG]) if MODEL_COMPUTE_TAG in tags else None
    top = phases[-1]
    figures = {
        "passed": not reasons,
        "p99_ms_at_top_load": top.p99_ms,
        "throughput_rps_at_top_load": top.throughput_rps,
        "rps_within_slo": within,
        "replicas_for_peak": replicas_needed(config.peak_rps, within),
        "shedding_begins_rps": shedding_begins_rps(phases),
        "rss_growth_mib": trend.growth_mib if trend else None,
        "served_usd_per_1000_predictions": cost.usd_per_1000_predictions if cost else None,
        "server_cpu_s_per_1000_requests": cost.cpu_s_per_1000_requests if cost else None,
        "model_compute_only_usd_per_1000_predictions": compute_only,
    }
    files = {"latency_vs_load.png": plots.latency_plot(phases, slo.p99_ms)}
    if run.rss_samples:
        files["server_memory.png"] = plots.memory_plot(run.rss_samples)
    numbers = {k: v for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    urls = _log_to_mlflow(registry, registered_model.tags["mlflow_run_id"], files, numbers)
    registry.tag_version(
        version,
        {
            "load_test_decision": "passed" if not reasons else "refused",
            "load_test_reason": "; ".join(reasons) or "SLO held at every load, memory flat",
            "served_usd_per_1000_predictions": f"{figures['served_usd_per_1000_predictions']}",
        },
    )
    value = {
        "tested": True,
        "version": version,
        "reasons": reasons,
        "slo_p99_ms": slo.p99_ms,
        "slo_error_rate": slo.error_rate,
        "budget_usd_per_1000_predictions": config.budget_usd_per_1000_predictions,
        "phases": [phase.__dict__ for phase in phases],
        "plots": urls,
        **figures,
    }
    pictures = "\n".join(f"- [{name}]({url})" for name, url in urls.items())
    metadata = {
        **{k: (v if v is not None else dg.MetadataValue.null()) for k, v in figures.items()},
        "phases": dg.MetadataValue.md(phase_table(phases) + "\n\nPictures (MLflow):\n" + pictures),
        **{f"plot_{name.removesuffix('.png')}": dg.MetadataValue.url(url) for name, url in urls.items()},
        "reasons": "; ".join(reasons) or "none",
    }
    return dg.Output(value, metadata=readable(metadata))


@dg.asset_check(
    asset="load_test",
    blocking=True,  # champion_model depends on load_test: a refusal here keeps the alias where it is
    description="The challenger holds its SLO at 10x the declared peak with flat memory and within budget.",
)
def load_test_gate(load_test: dict) -> dg.AssetCheckResult:
    if not load_test["tested"]:
        return dg.AssetCheckResult(passed=True, description=load_test["reason"], metadata={"tested": False})
    reasons = load_test["reasons"]
    observed = {
        "slo_p99_ms": load_test["slo_p99_ms"],
        "slo_error_rate": load_test["slo_error_rate"],
        "p99_ms_at_top_load": load_test["p99_ms_at_top_load"],
        "error_rate_at_top_load": load_test["phases"][-1]["error_rate"],
        "rss_growth_mib": load_test["rss_growth_mib"],
        "served_usd_per_1000_predictions": load_test["served_usd_per_1000_predictions"],
        "budget_usd_per_1000_predictions": load_test["budget_usd_per_1000_predictions"],
    }
    return dg.AssetCheckResult(
        passed=not reasons,
        severity=dg.AssetCheckSeverity.ERROR,
        description="passed: SLO held at every load, memory flat" if not reasons else "refused: " + "; ".join(reasons),
        metadata=readable({k: v if v is not None else dg.MetadataValue.null() for k, v in observed.items()}),
    )
