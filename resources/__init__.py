"""Resources every asset receives as typed parameters, with embedded defaults for a laptop."""

from pathlib import Path

import dagster as dg

from resources.artifact_store import ArtifactStore, LocalArtifactStore, S3ArtifactStore
from resources.flight_source import FlightSource
from resources.mlflow_registry import MlflowRegistry
from resources.settings import default_tracking_uri, mlops_home

__all__ = ["ArtifactStore", "FlightSource", "LocalArtifactStore", "MlflowRegistry", "S3ArtifactStore", "defs"]


def local_resources(home: Path | None = None) -> dict:
    """The embedded defaults: files, SQLite MLflow and artifacts under `home` ($MLOPS_HOME)."""
    home = home or mlops_home()
    return {
        "source": FlightSource(),
        "store": LocalArtifactStore(root=str(home / "artifacts")),
        "registry": MlflowRegistry(
            tracking_uri=default_tracking_uri(home), artifact_location=(home / "mlartifacts").as_uri()
        ),
    }


def defs() -> dg.Definitions:
    return dg.Definitions(resources=local_resources())
