"""The MLflow calls of the registry mirror, the only serving module that imports mlflow."""

from __future__ import annotations

from pathlib import Path


class MirrorClient:
    """Resolve an alias to a version, download a version: all the mirror asks of MLflow."""

    def __init__(self, tracking_uri: str | None, registry_uri: str | None = None):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    def resolve(self, name: str, alias: str) -> tuple[str, dict] | None:
        """(version, tags) the alias names, or None if there is no such model or alias (yet)."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        # int from the sqlite store, str over REST: always compare as strings.
        return str(version.version), dict(version.tags or {})

    def download(self, name: str, version: str, folder: Path) -> None:
        import mlflow

        # Resolve the artifact location with our own client: mlflow resolves a `models:/` URI whose
        # source is a logged model (`models:/m-...`) against its process-global tracking URI.
        location = self.client.get_model_version_download_uri(name, version)
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(folder))
