"""`MLOPS_ENV` picks the resources: embedded defaults unless it says `prod`, with production settings read
when a run starts (dg.EnvVar), never while definitions load."""

import dagster as dg
import pytest

import resources
from resources import LocalArtifactStore, MlflowRegistry, S3ArtifactStore, ServingEndpoint

PROD_SETTINGS = ("MLOPS_S3_BUCKET", "MLFLOW_TRACKING_URI", "MLOPS_S3_PREFIX", "MLOPS_SERVING_URL", "MLOPS_SERVE_TOKEN")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("MLOPS_ENV", *PROD_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    return monkeypatch


def test_local_is_the_default(clean_env, tmp_path):
    selected = resources.defs().resources
    assert "io_manager" not in selected  # Dagster's own filesystem IO manager under $DAGSTER_HOME
    assert isinstance(selected["store"], LocalArtifactStore) and selected["store"].root == str(tmp_path / "artifacts")
    assert selected["registry"].tracking_uri.startswith("sqlite:///")
    assert set(selected) == set(resources.local_resources(tmp_path))


def test_prod_selects_s3_and_the_tracking_server_with_settings_from_the_environment(clean_env):
    from dagster_aws.s3 import S3PickleIOManager

    clean_env.setenv("MLOPS_ENV", "prod")
    selected = resources.defs().resources  # loads with no setting present: nothing is read or reached yet
    assert set(selected) == set(resources.local_resources()) | {"io_manager"}
    assert isinstance(selected["io_manager"], S3PickleIOManager)
    assert isinstance(selected["store"], S3ArtifactStore) and isinstance(selected["registry"], MlflowRegistry)
    assert selected["io_manager"].s3_prefix == "mlops/io" and selected["store"].prefix == "mlops/artifacts"
    assert selected["serving"].url is None and selected["serving"].token is None

    clean_env.setenv("MLOPS_S3_BUCKET", "bucket-from-env")
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    clean_env.setenv("MLOPS_SERVE_TOKEN", "s3cret")
    clean_env.setenv("MLOPS_S3_PREFIX", "/team-a/")
    selected = resources.defs().resources
    with dg.build_resources({k: selected[k] for k in ("store", "registry", "serving")}) as built:
        assert built.store.bucket == "bucket-from-env" and built.store.prefix == "team-a/artifacts"
        assert built.registry.tracking_uri == "http://mlflow:5000"
        assert built.serving.token == "s3cret"
    # The secret itself is not part of the definitions, only the variable's name.
    assert isinstance(selected["serving"].token, dg.EnvVar) and selected["serving"].token == "MLOPS_SERVE_TOKEN"
    assert isinstance(selected["serving"], ServingEndpoint)


def test_an_unknown_environment_fails_loudly(clean_env):
    clean_env.setenv("MLOPS_ENV", "staging")
    with pytest.raises(ValueError, match="MLOPS_ENV='staging'"):
        resources.defs()


def test_the_code_location_loads_in_prod_without_any_setting(clean_env):
    from mlops_assets.definitions import defs

    clean_env.setenv("MLOPS_ENV", "prod")
    definitions = defs()
    definitions.get_repository_def().load_all_definitions()  # resolves every asset's resource requirements
    assert isinstance(definitions.resources["io_manager"], dg.ConfigurableIOManager)


def test_prod_requires_the_serving_token_wherever_a_server_is_named(clean_env):
    # The code server loads definitions without the secret; the run pod or task that executes them has it.
    clean_env.setenv("MLOPS_ENV", "prod")
    clean_env.setenv("MLOPS_SERVING_URL", "mlops-serve:8001")
    serving = resources.defs().resources["serving"]
    assert serving.url == "mlops-serve:8001"
    assert isinstance(serving.token, dg.EnvVar) and serving.token == "MLOPS_SERVE_TOKEN"
    # A run without it fails before any step, naming the variable, instead of calling the server unauthenticated.
    missing = pytest.raises(dg.DagsterInvalidConfigError, match="MLOPS_SERVE_TOKEN")
    with missing, dg.build_resources({"serving": serving}):
        pass
    clean_env.setenv("MLOPS_SERVE_TOKEN", "s3cret")
    with dg.build_resources({"serving": serving}) as built:
        assert built.serving.headers() == {"authorization": "Bearer s3cret"}


def test_local_sends_the_token_only_where_it_is_set(clean_env, tmp_path):
    clean_env.setenv("MLOPS_SERVING_URL", "127.0.0.1:8001")
    assert resources.local_resources(tmp_path)["serving"].token is None  # `make serve` without --token
    clean_env.setenv("MLOPS_SERVE_TOKEN", "s3cret")
    serving = resources.local_resources(tmp_path)["serving"]
    assert isinstance(serving.token, dg.EnvVar) and serving.token == "MLOPS_SERVE_TOKEN"
    with dg.build_resources({"serving": serving}) as built:
        assert built.serving.headers() == {"authorization": "Bearer s3cret"}
