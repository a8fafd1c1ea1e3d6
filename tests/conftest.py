"""Shared fixtures: a throwaway MLOPS_HOME with real SQLite MLflow and real Dagster runs."""

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from deploy.local import runs
from mlops_assets.training.training_data import TrainingDataConfig
from resources import local_resources

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests never write to a developer's tracking server

# Small enough for 2 cores, large enough to learn something real.
FAST_DATA = {"train_months": ["2013-01"], "validation_month": "2013-02"}
FAST_TRAIN = {"epochs": 2, "hidden": [64, 32]}
FAST_EVAL = {"evaluation_month": "2013-03", "latency_runs": 30}
FAST_COMPRESSION = {
    "pruned_model": {"keep_fraction": 0.5, "steps": 2, "finetune_epochs": 1},
    "student_model": {"epochs": 1},
    "int8_static_model": {"calibration_rows": 512},
    "model_scorecard": {"latency_runs": 50, "throughput_repeats": 10, "rounds": 1},
}
# Every training run load-tests its approved challenger before champion moves: short phases at a low peak.
FAST_LOAD_TEST = {"peak_rps": 10.0, "phase_seconds": 2.0}


def materialize(selection, resources, ops=None, instance=None, **kwargs) -> dg.ExecuteInProcessResult:
    """deploy.local.runs.materialize with the argument order the tests use."""
    return runs.materialize(selection, resources=resources, instance=instance, ops=ops, **kwargs)


def training_ops(**overrides) -> dict:
    """The small training run's op config; each override goes to the op whose config has that field."""
    data = {k: v for k, v in overrides.items() if k in TrainingDataConfig.model_fields}
    train = {k: v for k, v in overrides.items() if k not in data}
    return {
        "training_data": {**FAST_DATA, **data},
        "trained_model": {**FAST_TRAIN, **train},
        "evaluation_report": FAST_EVAL,
        "load_test": FAST_LOAD_TEST,
        **FAST_COMPRESSION,
    }


@pytest.fixture(scope="session")
def features_home(tmp_path_factory) -> Path:
    """An MLOPS_HOME whose store holds validated features for 2013-01..03 (built once per session)."""
    home = tmp_path_factory.mktemp("features_home")
    resources = local_resources(home)
    for month in ("2013-01", "2013-02", "2013-03"):
        assert materialize(["raw_flights", "validated_features"], resources, partition_key=month).success
    return home


@pytest.fixture
def home(features_home, tmp_path) -> Path:
    """A fresh registry and Dagster storage for one test, sharing the session's validated features."""
    shutil.copytree(features_home / "artifacts" / "features", tmp_path / "artifacts" / "features")
    return tmp_path


@pytest.fixture
def resources(home) -> dict:
    return local_resources(home)


@pytest.fixture(scope="session")
def monitored_home(features_home, tmp_path_factory) -> Path:
    """A home with a small champion trained on 2013-01 (built once per session for the drift tests)."""
    from tests.sensors.support import champion_home

    return champion_home(features_home, tmp_path_factory.mktemp("monitoring"))


@pytest.fixture
def monitored_resources(monitored_home) -> dict:
    return local_resources(monitored_home)


@pytest.fixture
def instance():
    # A persistent (temporary) instance: build_sensor_context refuses an ephemeral one.
    with dg.instance_for_test() as instance:
        yield instance
