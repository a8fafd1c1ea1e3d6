"""Fixtures for the serving tests: real servers on free loopback ports, real ONNX models, a real
MLflow registry on sqlite. Nothing that runs here is mocked."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import demo_models as dm
from tests.serving.support import MODEL, RunningServer, ServerProcess, loopback_settings


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    files = {
        "flight_v1": dm.save(dm.flight_model(seed=0), folder / "flight_v1.onnx"),
        "flight_v2": dm.save(dm.flight_model(seed=1), folder / "flight_v2.onnx"),
        "flight_changed": dm.save(dm.flight_model(seed=2, drop_input="visib"), folder / "flight_changed.onnx"),
        "types": dm.save(dm.types_model(), folder / "types.onnx"),
        "slow": dm.save(dm.slow_model(width=1024, repeats=60), folder / "slow.onnx"),
        "gather": dm.save(dm.gather_model(), folder / "gather.onnx"),
    }
    corrupt = folder / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an onnx protobuf" * 10)
    files["corrupt"] = corrupt
    return files


@pytest.fixture
def serve(tmp_path):
    """Factory: `serve(model_path=..., **config)` starts a server and waits until it is ready."""
    servers: list[RunningServer] = []

    def start(wait_ready: bool = True, **overrides) -> RunningServer:
        # Tests of REST pass a free http_port, tests of shipping a log_ship_to folder.
        values = dict(poll_interval=0.2, cache_dir=str(tmp_path / "cache"), grace_period=10.0)
        server = RunningServer(loopback_settings(tmp_path, **{**values, **overrides}))
        servers.append(server)
        if wait_ready:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def serve_process(tmp_path):
    processes: list[ServerProcess] = []

    def start(args: list[str], env: dict | None = None) -> ServerProcess:
        process = ServerProcess(args, env, tmp_path / f"server-{len(processes)}.log")
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


@pytest.fixture
def mlflow_registry(tmp_path):
    """A real MLflow tracking store + registry on sqlite; `register(model)` logs a new version."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("serving-tests", artifact_location=(tmp_path / "artifacts").as_uri())

    class Registry:
        tracking_uri = uri

        def __init__(self):
            self.client = client

        def register(self, model, name: str = MODEL) -> str:
            # The fluent API needs global URIs: set them for this call and put the raw previous values
            # back (None when unset), so no later code defaults to a store in the working directory.
            previous = (tracking_utils._tracking_uri, registry_utils._registry_uri)
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            try:
                with mlflow.start_run(experiment_id=experiment_id):
                    info = mlflow.onnx.log_model(
                        model,
                        name="model",
                        registered_model_name=name,
                        save_as_external_data=False,
                        onnx_execution_providers=["CPUExecutionProvider"],
                    )
            finally:
                mlflow.set_tracking_uri(previous[0])
                registry_utils._registry_uri = previous[1]
            return str(info.registered_model_version)

        def set_alias(self, alias: str, version: str, name: str = MODEL) -> None:
            client.set_registered_model_alias(name, alias, version)

    return Registry()
