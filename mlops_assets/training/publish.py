"""Publishing a candidate: its files to the store, its ONNX model to its MLflow run, lineage on the run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mlops_assets import onnx_metrics
from mlops_assets.features_spec import FEATURES
from mlops_assets.training.values import Candidate, TrainedModel
from resources import ArtifactStore, MlflowRegistry
from serving.sessions import SessionOptions, record_options

# The ONNX Runtime options every candidate carries: the evaluation report and the scorecard measure it under
# them and the server opens it with them (it sets only its own thread count, sized to the pod).
SESSION_OPTIONS = SessionOptions()


def _candidate_run(registry: MlflowRegistry, trained: TrainedModel, candidate: str, params: dict) -> str:
    """A new MLflow run for `candidate`, nested under the training run and tagged with its lineage."""
    with registry.active_run(run_name=f"{candidate} {trained.train_months}") as run:
        import mlflow

        mlflow.set_tags(
            {
                # MLflow's own parent tag: the UI nests the candidate's run under the training run.
                "mlflow.parentRunId": trained.run_id,
                "candidate": candidate,
                "training_run_id": trained.run_id,
                **trained.lineage(),
            }
        )
        mlflow.log_params(params)
        return run.info.run_id


def mlflow_signature(onnx_bytes: bytes):
    """The graph's inputs and outputs as an MLflow tensor signature. With it, MLflow's own tools take a
    DataFrame of raw feature columns: pyfunc reshapes each column to the [rows, 1] tensor the graph
    wants, so `pyfunc.load_model(...).predict(df)` and `mlflow models serve` work on the same file."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    session = onnx_metrics.session(onnx_bytes)

    def spec(arg) -> TensorSpec:
        dtype = np.dtype(object) if arg.type == "tensor(string)" else np.dtype(np.float32)
        return TensorSpec(dtype, tuple(-1 if not isinstance(d, int) else d for d in arg.shape), arg.name)

    return ModelSignature(
        inputs=Schema([spec(i) for i in session.get_inputs()]),
        outputs=Schema([spec(o) for o in session.get_outputs()]),
    )


def log_onnx(
    registry: MlflowRegistry, run_id: str, onnx_bytes: bytes, metrics: dict[str, float], example: pd.DataFrame
) -> str:
    """Log an ONNX file as the `model` of an MLflow run, as one file for the CPU, with its signature and
    `example` (raw feature rows) as input example; returns its model URI."""
    with registry.active_run(run_id=run_id):
        import mlflow
        import onnx
        import onnxruntime

        logged = mlflow.onnx.log_model(
            onnx.load_from_string(onnx_bytes),
            name="model",
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            signature=mlflow_signature(onnx_bytes),
            input_example=example[list(FEATURES)].head(2),
            # Stated, not inferred: inference loads the model in a subprocess, ~4 s per model, and
            # would find the same two packages.
            pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        )
        mlflow.log_metrics(metrics)
    return logged.model_uri


def publish_candidate(
    candidate: str,
    onnx_bytes: bytes,
    *,
    trained: TrainedModel,
    precision: str,
    parameters: int,
    hidden: list[int],
    val_auc: float,
    metrics: dict[str, float],
    example: pd.DataFrame,
    store: ArtifactStore,
    registry: MlflowRegistry,
    run_id: str | None = None,
    params: dict | None = None,
    history: Sequence[dict] = (),
    network: bytes | None = None,
    checkpoint: bytes | None = None,
    source: Candidate | None = None,
) -> tuple[Candidate, dict[str, str]]:
    """Publish one candidate: its MLflow run, its files in the store, its ONNX model logged to the run.

    `run_id` None makes a new run nested under the training run with the lineage tags and `params`
    (the baseline passes the training run itself); `history` rows become per-step metrics. Float
    candidates bring the bare `network` and their `checkpoint`; an int8 candidate names its `source`.
    Returns the candidate and where each file landed, by name.
    """
    onnx_bytes = record_options(onnx_bytes, SESSION_OPTIONS)
    if run_id is None:
        named = {"source": source.candidate} if source else {}
        run_id = _candidate_run(registry, trained, candidate, {**(params or {}), **named})
    with registry.active_run(run_id=run_id):
        import mlflow

        if source is not None:
            mlflow.set_tag("source_run_id", source.run_id)
        for step, row in enumerate(history, start=1):
            mlflow.log_metrics({k: v for k, v in row.items() if isinstance(v, float)}, step=step)
    files = {"model.onnx": onnx_bytes, "network.onnx": network, "checkpoint.pt": checkpoint}
    keys = {name: f"models/{run_id}/{name}" for name, data in files.items() if data is not None}
    paths = {name: store.write_bytes(key, files[name]) for name, key in keys.items()}
    model_uri = log_onnx(registry, run_id, onnx_bytes, metrics, example)
    value = Candidate(
        candidate=candidate,
        precision=precision,
        family=trained.family,
        run_id=run_id,
        training_run_id=trained.run_id,
        onnx_key=keys["model.onnx"],
        model_uri=model_uri,
        size_bytes=len(onnx_bytes),
        parameters=parameters,
        hidden=hidden,
        val_auc=val_auc,
        network_key=keys.get("network.onnx"),
        checkpoint_key=keys.get("checkpoint.pt"),
        source=source.candidate if source else None,
    )
    return value, paths
