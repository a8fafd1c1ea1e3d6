"""deployment: the post-deployment integration test of each promotion against the running server."""

import time

import dagster as dg
import numpy as np

from mlops_assets import onnx_metrics
from mlops_assets.features.assets import load_features
from mlops_assets.metadata import readable
from mlops_assets.oip_client import infer_inputs
from mlops_assets.training.onnx_export import onnx_feeds
from resources import ArtifactStore, MlflowRegistry
from resources.serving_endpoint import ServingEndpoint

SMOKE_TOLERANCE = 1e-5


class DeploymentConfig(dg.Config):
    smoke_rows: int = 64
    """Rows of the evaluation month sent in one smoke request."""
    latency_calls: int = 50
    """Single-row requests timed for the recorded latency."""


# Answers that mean "not yet": the server is starting, draining, restarting, shedding load or slow. Anything else
# (UNAUTHENTICATED, PERMISSION_DENIED, INTERNAL, INVALID_ARGUMENT, ...) is an answer, and waiting will not change it.
RETRIABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})

HINTS = {
    "UNAUTHENTICATED": "The server requires its bearer token (mlops-serve --token); this run {token}.",
    "PERMISSION_DENIED": "The server knows the caller but does not allow it this call; this run {token}.",
    "INTERNAL": "The server failed while answering; its log has the stack trace.",
}


def _status(error) -> str:
    """The gRPC status name of a tritonclient error ("StatusCode.UNAUTHENTICATED" -> "UNAUTHENTICATED")."""
    return str(error.status() or "UNKNOWN").removeprefix("StatusCode.")


def _refused(endpoint: ServingEndpoint, what: str, error) -> dg.Failure:
    """A refusal as the asset's failure: the status named, what it means, and the token's presence (never its value)."""
    status = _status(error)
    token = "sent a token it does not accept" if endpoint.token else "sent none: set MLOPS_SERVE_TOKEN for the run"
    hint = HINTS.get(status, "See the server's log.").format(token=token)
    return dg.Failure(
        description=f"server {endpoint.url} answered {status} to {what}: {error.message()}. {hint}",
        metadata={"server": endpoint.url, "grpc_status": status, "token_sent": bool(endpoint.token)},
    )


def _call(endpoint: ServingEndpoint, what: str, call):
    """One call whose refusal fails the asset, naming the status."""
    from tritonclient.utils import InferenceServerException

    try:
        return call()
    except InferenceServerException as error:
        raise _refused(endpoint, what, error) from None


def _wait_ready(endpoint: ServingEndpoint, model: str, version: str) -> float:
    """Seconds until the server reports `version` ready; it picks promotions up on its own poll."""
    from tritonclient.utils import InferenceServerException

    client, start, last = endpoint.client(), time.monotonic(), "none"
    while (elapsed := time.monotonic() - start) < endpoint.ready_timeout_s:
        timeout = max(1.0, min(endpoint.call_timeout_s, endpoint.ready_timeout_s - elapsed))
        try:
            if client.is_model_ready(model, model_version=version, headers=endpoint.headers(), client_timeout=timeout):
                return time.monotonic() - start
            last = "not ready"
        except InferenceServerException as error:
            if _status(error) not in RETRIABLE:
                raise _refused(endpoint, f"the readiness check of {model} version {version}", error) from None
            last = f"{_status(error)}: {error.message()}"  # starting, restarting or unreachable: poll on
        time.sleep(0.5)
    raise dg.Failure(
        f"server {endpoint.url} did not report {model} version {version} ready in {endpoint.ready_timeout_s} s "
        f"(last answer: {last}); a server started with --require-approval loads only versions promotion_gate approved"
    )


@dg.asset(group_name="deployment", kinds={"grpc", "onnx"})
def deployment(
    context: dg.AssetExecutionContext,
    config: DeploymentConfig,
    champion_model: dict,
    serving: ServingEndpoint,
    store: ArtifactStore,
    registry: MlflowRegistry,
) -> dg.MaterializeResult:
    """The served champion, verified: the server reports it ready and answers like onnxruntime does locally."""
    version = champion_model["version"]
    if version is None:  # the first challenger was refused: there is nothing to serve yet
        return dg.MaterializeResult(metadata=readable({"checked": False, "reason": "no champion yet"}))
    if not serving.url:
        return dg.MaterializeResult(
            metadata=readable({"version": version, "checked": False, "reason": "no server configured"})
        )
    ready_after = _wait_ready(serving, registry.model_name, version)

    month = registry.client().get_model_version(registry.model_name, version).tags["evaluation_month"]
    rows = load_features(store, [month]).head(config.smoke_rows)
    feeds = onnx_feeds(rows)
    expected = onnx_metrics.session(registry.onnx_bytes(version)).run(["probability"], feeds)[0]
    client, timeout = serving.client(), serving.call_timeout_s
    inputs = infer_inputs(feeds)
    reply = _call(
        serving,
        f"the smoke request ({len(rows)} rows)",
        lambda: client.infer(
            registry.model_name, inputs, model_version=version, headers=serving.headers(), client_timeout=timeout
        ),
    )
    served = reply.as_numpy("probability")
    max_diff = float(np.abs(served.reshape(-1) - expected.reshape(-1)).max())
    if max_diff > SMOKE_TOLERANCE:
        raise dg.Failure(f"server answers differ from onnxruntime by {max_diff:.2e} (> {SMOKE_TOLERANCE})")

    single = infer_inputs(onnx_feeds(rows.head(1)))
    latencies = []
    for _ in range(config.latency_calls):
        start = time.perf_counter()
        _call(
            serving,
            "a timed single-row request",
            lambda: client.infer(
                registry.model_name, single, model_version=version, headers=serving.headers(), client_timeout=timeout
            ),
        )
        latencies.append((time.perf_counter() - start) * 1e3)
    return dg.MaterializeResult(
        metadata=readable(
            {
                "version": version,
                "checked": True,
                "server": serving.url,
                "ready_after_s": ready_after,
                "smoke_rows": len(rows),
                "max_abs_diff": max_diff,
                "latency_p50_ms": float(np.percentile(latencies, 50)),
                "latency_p99_ms": float(np.percentile(latencies, 99)),
            }
        )
    )
