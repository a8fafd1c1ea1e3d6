"""The deployment asset against a real mlops-serve on loopback, called by tritonclient."""

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.deployment.assets import RETRIABLE, _refused, _status
from resources import ServingEndpoint, local_resources
from sensors.jobs import TRAINING_SELECTION
from serving import demo_models
from serving.server import ServeConfig
from tests.conftest import materialize
from tests.mlops_assets.test_compression import compression_ops
from tests.serving.support import RunningServer, free_port


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="module")
def resources(features_home, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("deployment_home")
    shutil.copytree(features_home / "artifacts" / "features", home / "artifacts" / "features")
    return local_resources(home)


@pytest.fixture(scope="module")
def champion(resources, instance) -> str:
    # The training job also materializes `deployment`; with no server configured it checks nothing.
    assert materialize(TRAINING_SELECTION, resources, ops=compression_ops(), instance=instance).success
    return str(resources["registry"].version_by_alias("champion").version)


TOKEN = "deployment-test-token"


def _server(tmp_path, **config) -> RunningServer:
    server = RunningServer(
        ServeConfig(
            host="127.0.0.1",
            port=free_port(),
            metrics_port=-1,
            http_port=-1,
            log_ship_to="none",
            poll_interval=0.2,
            cache_dir=str(tmp_path / "serving_cache"),
            prediction_log_dir=str(tmp_path / "prediction_log"),
            **config,
        )
    )
    server.wait_ready()
    return server


def test_deployment_verifies_the_promoted_version_on_the_running_server(tmp_path, resources, instance, champion):
    server = _server(tmp_path, tracking_uri=resources["registry"].tracking_uri, model_name="flight_delay")
    try:
        endpoint = ServingEndpoint(url=f"127.0.0.1:{server.config.port}", ready_timeout_s=30)
        result = materialize(["deployment"], {**resources, "serving": endpoint}, instance=instance)
    finally:
        server.stop()
    metadata = result.asset_materializations_for_node("deployment")[0].metadata
    assert metadata["checked"].value is True
    assert metadata["version"].value == champion
    assert metadata["max_abs_diff"].value <= 1e-5
    assert 0 < metadata["latency_p50_ms"].value <= metadata["latency_p99_ms"].value
    assert metadata["smoke_rows"].value == 64


def test_deployment_fails_when_the_server_answers_differently(tmp_path, resources, instance, champion):
    # A server that claims the champion's version but holds another model: the smoke test must catch it.
    impostor = demo_models.save(demo_models.flight_model(seed=5), tmp_path / "impostor.onnx")
    server = _server(tmp_path, model_path=str(impostor), model_version=champion, model_name="flight_delay")
    try:
        endpoint = ServingEndpoint(url=f"127.0.0.1:{server.config.port}", ready_timeout_s=10)
        with pytest.raises(dg.Failure, match="differ from onnxruntime"):
            materialize(["deployment"], {**resources, "serving": endpoint}, instance=instance)
    finally:
        server.stop()


def test_deployment_without_a_server_records_that_nothing_was_checked(resources, instance, champion):
    result = materialize(["deployment"], {**resources, "serving": ServingEndpoint()}, instance=instance)
    metadata = result.asset_materializations_for_node("deployment")[0].metadata
    assert metadata["checked"].value is False and metadata["version"].value == champion


# --- a server that requires its bearer token (as every production config runs it) ------------------


@pytest.fixture(scope="module")
def secured(resources, champion, tmp_path_factory):
    """One registry-following server configured as in production (--token, --require-approval)."""
    server = _server(
        tmp_path_factory.mktemp("secured"),
        tracking_uri=resources["registry"].tracking_uri,
        model_name="flight_delay",
        token=TOKEN,
        require_approval=True,  # the champion carries promotion_gate's approval, so it is served
    )
    yield server
    server.stop()


def _failure(resources, instance, endpoint) -> tuple[float, dg.DagsterEvent]:
    start = time.monotonic()
    result = materialize(["deployment"], {**resources, "serving": endpoint}, instance=instance, raise_on_error=False)
    elapsed = time.monotonic() - start
    assert not result.success
    [failure] = [event for event in result.all_node_events if event.is_step_failure]
    return elapsed, failure


@pytest.mark.parametrize("token", ["not-the-token", None], ids=["wrong-token", "no-token"])
def test_a_refused_token_fails_the_asset_at_once_naming_unauthenticated(resources, instance, secured, token):
    # A long ready timeout: the refusal must end the check at the first answer, not be polled until the deadline.
    endpoint = ServingEndpoint(url=secured.url, token=token, ready_timeout_s=120)
    elapsed, failure = _failure(resources, instance, endpoint)
    error = failure.step_failure_data.user_failure_data
    assert "UNAUTHENTICATED" in error.description and secured.url in error.description
    assert ("does not accept" if token else "set MLOPS_SERVE_TOKEN") in error.description
    assert "not-the-token" not in error.description  # the token itself never lands in the event log
    assert error.metadata["grpc_status"].value == "UNAUTHENTICATED"
    assert error.metadata["token_sent"].value is (token is not None)
    assert elapsed < 30, f"the refusal took {elapsed:.0f} s: it was retried instead of failing the asset"


def test_the_right_token_from_the_environment_passes(resources, instance, champion, secured, monkeypatch):
    # The local config as `make ui` runs it: MLOPS_SERVING_URL and MLOPS_SERVE_TOKEN in the environment.
    monkeypatch.setenv("MLOPS_SERVING_URL", secured.url)
    monkeypatch.setenv("MLOPS_SERVE_TOKEN", TOKEN)
    configured = local_resources(Path(resources["store"].root).parent)
    assert configured["serving"].token == dg.EnvVar("MLOPS_SERVE_TOKEN")  # a reference, resolved when the run starts
    result = materialize(["deployment"], configured, instance=instance)
    metadata = result.asset_materializations_for_node("deployment")[0].metadata
    assert metadata["checked"].value is True and metadata["version"].value == champion
    assert metadata["server"].value == secured.url


@pytest.mark.parametrize("status", ["UNAUTHENTICATED", "PERMISSION_DENIED", "INTERNAL", "INVALID_ARGUMENT"])
def test_refusals_are_final_and_name_their_status(status):
    from tritonclient.utils import InferenceServerException

    # tritonclient's own conversion of a gRPC status (tritonclient.grpc._utils.get_error_grpc).
    error = InferenceServerException("refused", status=f"StatusCode.{status}")
    assert _status(error) not in RETRIABLE
    failure = _refused(ServingEndpoint(url="mlops-serve:8001", token="t"), "the readiness check", error)
    assert failure.description.startswith(f"server mlops-serve:8001 answered {status} to the readiness check: refused.")
    assert failure.metadata["grpc_status"].value == status
