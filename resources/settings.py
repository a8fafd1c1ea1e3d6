"""Where embedded defaults keep their state on a laptop: one folder, `$MLOPS_HOME` (default ./.mlops)."""

import os
from pathlib import Path


def mlops_home() -> Path:
    return Path(os.environ.get("MLOPS_HOME", ".mlops")).resolve()


def default_tracking_uri(home: Path) -> str:
    """MLflow on SQLite beside the artifacts unless MLFLOW_TRACKING_URI names a server."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
