"""Resources every asset receives as typed parameters: embedded defaults for a laptop, or production.

`MLOPS_ENV` picks the set when definitions load: `local` (the default) or `prod` (resources.production).
"""

import os
from pathlib import Path

import dagster as dg

from resources.artifact_store import ArtifactStore, LocalArtifactStore, S3ArtifactStore
from resources.flight_source import FlightSource
from resources.mlflow_registry import MlflowRegistry
from resources.served_predictions import ServedPredictions
from resources.serving_endpoint import ServingEndpoint, token_from_environment
from resources.settings import default_tracking_uri, mlops_home

__all__ = [
    "ArtifactStore",
    "FlightSource",
    "LocalArtifactStore",
    "MlflowRegistry",
    "S3ArtifactStore",
    "ServedPredictions",
    "ServingEndpoint",
    "defs",
    "local_resources",
    "production_resources",
    "selected_resources",
]

ENVIRONMENTS = ("local", "prod")


def local_resources(home: Path | None = None) -> dict:
    """The embedded defaults: files, SQLite MLflow and artifacts under `home` ($MLOPS_HOME); the serving
    endpoint only where MLOPS_SERVING_URL names one (`make serve` listens on 127.0.0.1:8001), with the
    bearer token MLOPS_SERVE_TOKEN where set (`make serve` reads the same variable)."""
    home = home or mlops_home()
    store = LocalArtifactStore(root=str(home / "artifacts"))
    return {
        "source": FlightSource(uri=os.environ.get("MLOPS_FLIGHTS_URI") or None),
        "store": store,
        # `mlops-serve` ships its prediction log into this same folder by default.
        "served": ServedPredictions(store=store, batch_fallback=True),
        "registry": MlflowRegistry(
            tracking_uri=default_tracking_uri(home), artifact_location=(home / "mlartifacts").as_uri()
        ),
        "serving": ServingEndpoint(
            url=os.environ.get("MLOPS_SERVING_URL") or None, token=token_from_environment(required=False)
        ),
    }


def production_resources() -> dict:
    """S3 for asset values and files, an MLflow tracking server for runs and models (see resources.production)."""
    # Imported here so a laptop that never selects prod does not pay for dagster-aws at load.
    from resources.production import production_resources as build

    return build()


def selected_resources() -> dict:
    """The set `MLOPS_ENV` names; an unknown name fails loudly rather than falling back to local files."""
    environment = os.environ.get("MLOPS_ENV", "").strip().lower() or "local"
    if environment == "local":
        return local_resources()
    if environment == "prod":
        return production_resources()
    raise ValueError(f"MLOPS_ENV={environment!r} is not one of {', '.join(ENVIRONMENTS)}")


def defs() -> dg.Definitions:
    return dg.Definitions(resources=selected_resources())
