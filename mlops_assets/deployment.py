"""deployment: the post-deployment integration test of each promotion against the running server."""

import time

import dagster as dg
import numpy as np

from mlops_assets import onnx_metrics
from mlops_assets.features import load_features
from mlops_assets.modeling import onnx_feeds
from resources import ArtifactStore, MlflowRegistry
from resources.serving_endpoint import ServingEndpoint

SMOKE_TOLERANCE = 1e-5


class DeploymentConfig(dg.Config):
    smoke_rows: int = 64
    """Rows of the evaluation month sent in one smoke request."""
    latency_calls: int = 50
    """Single-row requests timed for the recorded latency."""


def _infer_inputs(feeds: dict[str, np.ndarray]):
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _wait_ready(endpoint: ServingEndpoint, model: str, version: str) -> float:
    """Seconds until the server reports `version` ready; it picks promotions up on its own poll."""
    from tritonclient.utils import InferenceServerException

    client, start = endpoint.client(), time.monotonic()
    while time.monotonic() - start < endpoint.ready_timeout_s:
        try:
            if client.is_model_ready(model, model_version=version, headers=endpoint.headers()):
                return time.monotonic() - start
        except InferenceServerException:  # restarting or not reachable yet: keep polling until the deadline
            pass
        time.sleep(0.5)
    raise dg.Failure(
        f"server {endpoint.url} did not report {model} version {version} ready in {endpoint.ready_timeout_s} s"
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
    if not serving.url:
        return dg.MaterializeResult(metadata={"version": version, "checked": False, "reason": "no server configured"})
    ready_after = _wait_ready(serving, registry.model_name, version)

    month = registry.client().get_model_version(registry.model_name, version).tags["evaluation_month"]
    rows = load_features(store, [month]).head(config.smoke_rows)
    feeds = onnx_feeds(rows)
    expected = onnx_metrics.session(registry.onnx_bytes(version)).run(["probability"], feeds)[0]
    client = serving.client()
    reply = client.infer(registry.model_name, _infer_inputs(feeds), model_version=version, headers=serving.headers())
    served = reply.as_numpy("probability")
    max_diff = float(np.abs(served.reshape(-1) - expected.reshape(-1)).max())
    if max_diff > SMOKE_TOLERANCE:
        raise dg.Failure(f"server answers differ from onnxruntime by {max_diff:.2e} (> {SMOKE_TOLERANCE})")

    single = _infer_inputs(onnx_feeds(rows.head(1)))
    latencies = []
    for _ in range(config.latency_calls):
        start = time.perf_counter()
        client.infer(registry.model_name, single, model_version=version, headers=serving.headers())
        latencies.append((time.perf_counter() - start) * 1e3)
    return dg.MaterializeResult(
        metadata={
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
