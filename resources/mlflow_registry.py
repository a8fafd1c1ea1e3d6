"""MLflow tracking and model registry, through MlflowClient rather than dagster-mlflow's global state.

Embedded default: SQLite plus a local artifact folder under $MLOPS_HOME. Production: set
`tracking_uri` to an MLflow server (`http://mlflow:5000`), which owns the artifact store.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from serving.traffic_split import TAG as TRAFFIC_SPLIT_TAG
from serving.traffic_split import TrafficSplit

CHAMPION = "champion"
CHALLENGER = "challenger"


class MlflowRegistry(dg.ConfigurableResource):
    tracking_uri: str
    experiment_name: str = "flight_delay"
    model_name: str = "flight_delay"
    artifact_location: str | None = None  # only used when the experiment is first created

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)

    @contextlib.contextmanager
    def _fluent(self) -> Iterator:
        """Point mlflow's global (fluent) API at this registry for one block, then restore it.

        mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into the environment, which would
        leak this registry into every later resource built in the process.
        """
        import mlflow

        saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            yield mlflow
        finally:
            mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"] or "")
            mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"] or "")
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    @contextlib.contextmanager
    def active_run(self, run_id: str | None = None, run_name: str | None = None) -> Iterator:
        """An mlflow fluent run bound to this registry (mlflow.onnx.log_model needs one)."""
        with self._fluent() as mlflow:
            if run_id is None:
                with mlflow.start_run(experiment_id=self.experiment_id(), run_name=run_name) as run:
                    yield run
            else:
                with mlflow.start_run(run_id=run_id) as run:
                    yield run

    def register(self, model_uri: str, tags: dict[str, str]):
        """A new version of `model_name` from a logged model, carrying `tags`."""
        with self._fluent() as mlflow:
            return mlflow.register_model(model_uri, self.model_name, tags=tags)

    def tag_version(self, version: str | int, tags: dict[str, object]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(self.model_name, str(version), key, str(value))

    def traffic_split(self) -> TrafficSplit:
        """The split every serving replica follows (a tag on the registered model); none when unset."""
        model = self.client().get_registered_model(self.model_name)
        return TrafficSplit.load(model.tags.get(TRAFFIC_SPLIT_TAG))

    def set_traffic_split(self, split: TrafficSplit) -> None:
        self.client().set_registered_model_tag(self.model_name, TRAFFIC_SPLIT_TAG, split.dump())

    def version_by_alias(self, alias: str):
        """The ModelVersion holding `alias`, or None when no version holds it yet."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(self.model_name, alias)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def ui_url(self) -> str:
        """Where people open MLflow: MLOPS_MLFLOW_UI_URL, else the tracking server, else `make mlflow-ui`."""
        configured = os.environ.get("MLOPS_MLFLOW_UI_URL")
        if configured:
            return configured.rstrip("/")
        if self.tracking_uri.startswith(("http://", "https://")):
            return self.tracking_uri.rstrip("/")
        return "http://127.0.0.1:5000"

    def log_report(self, run_name: str, files: dict[str, bytes], tags: dict[str, str]) -> str:
        """Log `files` (an HTML report, a plot) to a new run of the monitoring experiment; returns the
        MLflow UI address of the first file, which MLflow's artifact view renders."""
        client = self.client()
        name = f"{self.experiment_name}-monitoring"
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(name, artifact_location=self._monitoring_artifacts())
        )
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        with tempfile.TemporaryDirectory() as tmp:
            for filename, data in files.items():
                path = Path(tmp) / filename
                path.write_bytes(data)
                client.log_artifact(run.info.run_id, str(path))
        client.set_terminated(run.info.run_id)
        return self.artifact_url(run.info.run_id, next(iter(files)), experiment_id)

    def artifact_url(self, run_id: str, path: str, experiment_id: str | None = None) -> str:
        """The MLflow UI page that shows one artifact of a run (HTML and images render inline there)."""
        experiment_id = experiment_id or self.client().get_run(run_id).info.experiment_id
        return f"{self.ui_url()}/#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{path}"

    def _monitoring_artifacts(self) -> str | None:
        if self.artifact_location is None:
            return None
        return self.artifact_location.rstrip("/") + "-monitoring"

    def onnx_bytes(self, version: str | int) -> bytes:
        """The ONNX file of a registered version, fetched from the artifact store."""
        with tempfile.TemporaryDirectory() as tmp, self._fluent() as mlflow:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.model_name}/{version}", dst_path=tmp
            )
            files = sorted(Path(local).rglob("*.onnx"))
            if not files:
                raise FileNotFoundError(f"model {self.model_name} version {version} holds no .onnx file")
            return files[0].read_bytes()
