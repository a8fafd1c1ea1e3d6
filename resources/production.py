"""The production variant of every resource: asset values and files on S3, MLflow on its tracking server.

Selected by `MLOPS_ENV=prod` (see `resources.selected_resources`). Settings are read from the environment
of the process that runs the step, when the run starts (`dg.EnvVar`), never while definitions load:

    MLOPS_S3_BUCKET       bucket for asset values (Dagster IO manager) and the files assets write
    MLFLOW_TRACKING_URI   the MLflow tracking server, e.g. http://mlflow:5000; it owns the artifact store
    MLOPS_S3_PREFIX       optional key prefix inside the bucket (default "mlops"); read at load time
    MLOPS_FLIGHTS_URI     optional raw-data location (see FlightSource); read at load time
    MLOPS_SERVING_URL     optional host:port of the serving Service the `deployment` asset verifies
    MLOPS_SERVE_TOKEN     that server's bearer token, required in a run wherever MLOPS_SERVING_URL is set
                          (a secret: resolved when the run starts, so the code server never needs it)

AWS credentials and region come from boto3's own chain (ECS task role, EKS IRSA, AWS_* variables), so no key
sits in configuration. Any S3-compatible store (MinIO, Ceph, moto) works by setting boto3's own
`AWS_ENDPOINT_URL_S3`, which every client here honours, Dagster's compute-log manager and the MLflow server included.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_aws.s3 import S3PickleIOManager, S3Resource

from resources.artifact_store import S3ArtifactStore
from resources.flight_source import FlightSource
from resources.mlflow_registry import MlflowRegistry
from resources.served_predictions import ServedPredictions
from resources.serving_endpoint import ServingEndpoint, token_from_environment

DEFAULT_PREFIX = "mlops"


def production_prefix() -> str:
    return os.environ.get("MLOPS_S3_PREFIX", DEFAULT_PREFIX).strip("/") or DEFAULT_PREFIX


def production_resources() -> dict:
    """Resources for a deployment; keys match `local_resources` plus the S3 `io_manager`.

    Layout in the bucket: `<prefix>/io/<asset>/<partition>` holds values passed between assets (pickles, written
    by dagster-aws's S3PickleIOManager); `<prefix>/artifacts/...` holds the Parquet, checkpoints and ONNX files
    assets write through the ArtifactStore. MLflow keeps its artifacts where its server's
    `--artifacts-destination` points; clients reach them through the server.
    """
    prefix = production_prefix()
    bucket = dg.EnvVar("MLOPS_S3_BUCKET")
    serving_url = os.environ.get("MLOPS_SERVING_URL") or None
    store = S3ArtifactStore(bucket=bucket, prefix=f"{prefix}/artifacts")
    return {
        "io_manager": S3PickleIOManager(s3_resource=S3Resource(), s3_bucket=bucket, s3_prefix=f"{prefix}/io"),
        "source": FlightSource(uri=os.environ.get("MLOPS_FLIGHTS_URI") or None),
        "store": store,
        # Servers ship their prediction log to s3://<bucket>/<prefix>/artifacts/prediction_log/ (--log-ship-to).
        # No batch stand-in: a month without served traffic is reported as such, not judged on batch data.
        "served": ServedPredictions(store=store, batch_fallback=False),
        "registry": MlflowRegistry(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")),
        # Production servers always require a token: the definitions name the variable whenever a server is
        # named, whether or not the loading process holds the secret (run pods and tasks do, the code server not).
        "serving": ServingEndpoint(url=serving_url, token=token_from_environment(required=serving_url is not None)),
    }
