"""The deployment asset against a real mlops-serve on loopback, called by tritonclient."""

import shutil

import dagster as dg
import pytest

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


def _server(tmp_path, **config) -> RunningServer:
    server = RunningServer(
        ServeConfig(
            host="127.0.0.1",
            port=free_port(),
            metrics_port=-1,
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
