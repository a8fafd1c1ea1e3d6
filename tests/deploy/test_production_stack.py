"""The pipeline on the production stack, for real: Dagster storage in PostgreSQL (deploy/ecs/dagster.yaml as
shipped, settings from the environment), asset values and files in S3 (moto_server), MLflow as a tracking
server on PostgreSQL with artifacts in S3, and a serving replica following that server.

Resources come from `MLOPS_ENV=prod`, exactly as a deployment selects them; nothing here passes an S3
endpoint to any client: boto3's AWS_ENDPOINT_URL_S3 points them all at moto_server, as it would at MinIO.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from sensors.jobs import TRAINING_SELECTION
from tests.conftest import materialize
from tests.deploy.services import AWS_TEST_ENV, mlflow_server, postgres_server, s3_server, unavailable
from tests.deploy.support import DEPLOY, REPO_ROOT, free_port, http_status, start, stop, tail, wait_until
from tests.mlops_assets.test_compression import ACCURACY_ONLY, compression_ops

pytestmark = [pytest.mark.production, pytest.mark.timeout(1200)]

MONTHS = ["2013-01", "2013-02", "2013-03"]  # train, validation and evaluation months of the test configs
# The core assets checked below; the run materializes the whole training job (compression candidates too).
CHAIN = ["training_data", "trained_model", "onnx_model", "evaluation_report", "registered_model", "champion_model"]
PREFIX = "mlops"


@pytest.fixture(scope="module")
def stack():
    """Engines up, the instance and resources configured, the core assets materialized once for the module."""
    for module in ("psycopg2", "dagster_postgres"):
        try:
            __import__(module)
        except ImportError:
            unavailable(f"{module} is not installed (the project's [prod] extra)")
    logs = Path(tempfile.mkdtemp(prefix="mlops-prod-logs-"))
    home = Path(tempfile.mkdtemp(prefix="mlops-prod-home-"))
    with contextlib.ExitStack() as exits, pytest.MonkeyPatch.context() as env:
        try:
            for key, value in AWS_TEST_ENV.items():
                env.setenv(key, value)
            postgres = exits.enter_context(postgres_server())
            endpoint = exits.enter_context(s3_server(logs))
            env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
            import boto3

            s3 = boto3.client("s3")
            bucket = f"mlops-test-{os.urandom(4).hex()}"
            s3.create_bucket(Bucket=bucket)

            dagster_db = exits.enter_context(postgres.database("dagster"))
            mlflow_db = exits.enter_context(postgres.database("mlflow"))
            tracking_uri = exits.enter_context(
                mlflow_server(postgres.url(mlflow_db), f"s3://{bucket}/mlflow", dict(os.environ), logs)
            )

            # The deployment's settings: the environment every Dagster process and run task gets.
            settings = {
                "DAGSTER_PG_HOST": postgres.host,
                "DAGSTER_PG_PORT": str(postgres.port),
                "DAGSTER_PG_USER": postgres.user,
                "DAGSTER_PG_PASSWORD": postgres.password,
                "DAGSTER_PG_DB": dagster_db,
                "DAGSTER_PG_PASSWORD_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:pg",
                "MLOPS_ENV": "prod",
                "MLOPS_S3_BUCKET": bucket,
                "MLFLOW_TRACKING_URI": tracking_uri,
                "DAGSTER_HOME": str(home),
            }
            for key, value in settings.items():
                env.setenv(key, value)
            env.delenv("MLOPS_S3_PREFIX", raising=False)
            shutil.copy(DEPLOY / "ecs" / "dagster.yaml", home / "dagster.yaml")
            instance = dg.DagsterInstance.get()  # $DAGSTER_HOME/dagster.yaml, as every production process does
            exits.enter_context(instance)

            from resources import defs as resource_defs

            resources = resource_defs().resources
            features = [materialize(["raw_flights", "validated_features"], resources, instance=instance,
                                    partition_key=month) for month in MONTHS]  # fmt: skip
            assert all(result.success for result in features)
            # The training job as the schedule launches it, with the suite's quick stage settings.
            ops = compression_ops(ACCURACY_ONLY)
            training = materialize(TRAINING_SELECTION, resources, ops=ops, instance=instance)
            assert training.success
            # The same resources as a run sees them, settings resolved from the environment.
            resolved = exits.enter_context(
                dg.build_resources({"store": resources["store"], "registry": resources["registry"]})
            )
            yield {
                "postgres": postgres, "dagster_db": dagster_db, "mlflow_db": mlflow_db, "s3": s3,
                "bucket": bucket, "tracking_uri": tracking_uri, "instance": instance, "resources": resources,
                "store": resolved.store, "registry": resolved.registry,
                "features": features, "training": training, "logs": logs,
            }  # fmt: skip
        except BaseException:
            for name in ("mlflow.log", "moto.log"):
                print(f"--- {name}\n{tail(logs / name)}")
            raise
        finally:
            exits.close()
            shutil.rmtree(logs, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)


def _keys(stack, prefix: str) -> set[str]:
    pages = stack["s3"].get_paginator("list_objects_v2").paginate(Bucket=stack["bucket"], Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def test_prod_environment_selected_s3_and_the_tracking_server(stack):
    from dagster_aws.s3 import S3PickleIOManager

    from resources import S3ArtifactStore

    resources = stack["resources"]
    assert isinstance(resources["io_manager"], S3PickleIOManager)
    assert isinstance(resources["store"], S3ArtifactStore)
    instance = stack["instance"]
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"


def test_asset_values_and_files_are_objects_in_the_bucket(stack):
    training = stack["training"]
    values = _keys(stack, f"{PREFIX}/io/")
    # S3PickleIOManager: <prefix>/<asset>/<partition> for the values assets hand each other.
    assert {f"{PREFIX}/io/raw_flights/{month}" for month in MONTHS} <= values
    assert {f"{PREFIX}/io/{asset}" for asset in CHAIN} <= values
    files = _keys(stack, f"{PREFIX}/artifacts/")
    assert {f"{PREFIX}/artifacts/features/{month}.parquet" for month in MONTHS} <= files
    assert f"{PREFIX}/artifacts/{training.output_for_node('trained_model').checkpoint_key}" in files
    onnx_key = training.output_for_node("onnx_model").onnx_key
    assert f"{PREFIX}/artifacts/{onnx_key}" in files
    # The Parquet in S3 is what validated_features wrote: readable, with the label column.
    frame = stack["store"].read_frame(f"features/{MONTHS[0]}.parquet")
    assert len(frame) > 20_000
    # MLflow's server wrote the logged model into the bucket behind its proxy.
    mlflow_objects = _keys(stack, "mlflow/")
    assert any(key.endswith(".onnx") for key in mlflow_objects), sorted(mlflow_objects)[:20]


def test_step_logs_are_uploaded_by_the_s3_compute_log_manager(stack):
    logs = _keys(stack, "dagster/compute-logs/")
    assert logs, "no compute logs in the bucket"
    assert any(key.endswith((".out", ".err", ".complete")) for key in logs), sorted(logs)[:10]


def test_runs_and_materializations_are_rows_in_postgres(stack):
    run_ids = {result.run_id for result in [*stack["features"], stack["training"]]}
    with stack["postgres"].connect(stack["dagster_db"]) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs")
        runs = dict(cursor.fetchall())
        cursor.execute(
            "SELECT asset_key, count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "GROUP BY asset_key"
        )
        materializations = dict(cursor.fetchall())
    assert {run_ids_: runs[run_ids_] for run_ids_ in run_ids} == dict.fromkeys(run_ids, "SUCCESS")
    counts = {dg.AssetKey.from_db_string(key).to_user_string(): n for key, n in materializations.items()}
    assert counts["raw_flights"] == counts["validated_features"] == len(MONTHS)
    assert all(counts[asset] == 1 for asset in CHAIN)
    # And Dagster reads them back through the same instance, partitions included.
    instance = stack["instance"]
    assert instance.get_materialized_partitions(dg.AssetKey("validated_features")) == set(MONTHS)


def test_the_champion_is_registered_on_the_tracking_server_with_its_onnx_in_s3(stack):
    import onnxruntime as ort
    from mlflow import MlflowClient

    registered = stack["training"].output_for_node("registered_model")
    registry = stack["registry"]
    assert registry.tracking_uri == stack["tracking_uri"]
    champion = registry.version_by_alias("champion")
    assert champion is not None and str(champion.version) == str(registered.version) == "1"
    client = MlflowClient(tracking_uri=stack["tracking_uri"])
    run = client.get_run(registered.tags["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    # The same facts in the server's Postgres database.
    with stack["postgres"].connect(stack["mlflow_db"]) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name, alias, version FROM registered_model_aliases ORDER BY alias")
        assert ("flight_delay", "champion", 1) in cursor.fetchall()
    # A client that knows only the tracking URI fetches the model (the server proxies S3) and it runs.
    session = ort.InferenceSession(registry.onnx_bytes(champion.version), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probability"]


def test_a_serving_replica_follows_the_champion_through_the_tracking_server(stack, tmp_path):
    """What each serving pod does (deploy/k8s/serving.yaml): only MLFLOW_TRACKING_URI and its ports."""
    import tritonclient.grpc as grpcclient

    grpc_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "MLOPS_HOME": str(tmp_path),
        "MLOPS_SERVE_PORT": str(grpc_port),
        "MLOPS_SERVE_METRICS_PORT": str(http_port),
        "MLOPS_SERVE_HTTP_PORT": str(free_port()),  # REST is on by default: never the fixed 8000 in a test
        "MLOPS_SERVE_HOST": "127.0.0.1",
    }
    command = [sys.executable, "-c", "import sys; from serving.server import main; sys.exit(main())"]
    server = start(command, tmp_path / "serve.log", env=env, cwd=REPO_ROOT)
    try:
        ready = f"http://127.0.0.1:{http_port}/ready"
        wait_until(lambda: http_status(ready) == 200, 120, "mlops-serve /ready", 0.5, server)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        metadata = client.get_model_metadata("flight_delay", as_json=True)
        assert "1" in metadata["versions"], metadata
        # One flight, typed as the served model's metadata says (numbers FP32, categories BYTES).
        flight = {"hour": 8, "day_of_week": 2, "distance": 1000, "temp": 50, "wind_speed": 10, "precip": 0,
                  "visib": 10, "carrier": "UA", "origin": "EWR", "dest": "ORD"}  # fmt: skip
        inputs = []
        for spec in metadata["inputs"]:
            is_bytes = spec["datatype"] == "BYTES"
            array = np.array([[flight[spec["name"]]]], dtype=object if is_bytes else np.float32)
            tensor = grpcclient.InferInput(spec["name"], [1, 1], spec["datatype"])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        probability = client.infer("flight_delay", inputs).as_numpy("probability")
        assert probability.shape == (1, 1) and 0.0 <= float(probability[0, 0]) <= 1.0
    except BaseException:
        print(tail(tmp_path / "serve.log"))
        raise
    finally:
        stop(server)


def test_served_traffic_reaches_drift_report_and_live_performance_through_s3(stack, tmp_path):
    """A serving replica ships its prediction log to the bucket; run pods read it there, not from its disk."""
    from deploy.local import demo_traffic

    month = MONTHS[2]  # held out from the champion's training month
    frame = demo_traffic.sample_month(stack["store"], month, 1_000)
    env = {
        **os.environ,
        "MLOPS_HOME": str(tmp_path),  # the replica's own disk: nothing else reads it
        "MLOPS_SERVE_LOG_SHIP_TO": f"s3://{stack['bucket']}/{PREFIX}/artifacts",
    }
    server, url = demo_traffic.start_server(tmp_path, tmp_path / "serve.log", env=env)
    try:
        requests, failed = demo_traffic.replay(url, frame, "flight_delay")
    finally:
        assert demo_traffic.stop_server(server) == 0, tail(tmp_path / "serve.log")
    assert failed == 0 and requests >= len(frame) // demo_traffic.ROWS_PER_REQUEST
    shipped = _keys(stack, f"{PREFIX}/artifacts/prediction_log/{month.replace('-', '/')}/")
    assert shipped and not list((tmp_path / "prediction_log").glob("*.jsonl"))

    result = materialize(
        ["drift_report", "outcomes", "live_performance"],
        stack["resources"],
        instance=stack["instance"],
        partition_key=month,
    )
    assert result.success
    report = {k: v.value for k, v in result.asset_materializations_for_node("drift_report")[0].metadata.items()}
    assert report["current_source"] == "served_traffic" and report["served_rows"] == len(frame)
    assert report["served_segments"] == len(shipped) and report["corrupt_records"] == 0
    live = {k: v.value for k, v in result.asset_materializations_for_node("live_performance")[0].metadata.items()}
    assert live["judged_source"] == "served" and live["labelled_rows"] == len(frame)
    assert live["model_version"] == "1"
