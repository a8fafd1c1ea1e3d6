from pathlib import Path

import dagster as dg
import pytest

from resources import local_resources
from tests.sensors.support import champion_home


@pytest.fixture(scope="session")
def monitored_home(features_home, tmp_path_factory) -> Path:
    return champion_home(features_home, tmp_path_factory.mktemp("monitoring"))


@pytest.fixture
def monitored_resources(monitored_home) -> dict:
    return local_resources(monitored_home)


@pytest.fixture
def instance():
    # A persistent (temporary) instance: build_sensor_context refuses an ephemeral one.
    with dg.instance_for_test() as instance:
        yield instance
