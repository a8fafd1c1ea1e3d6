"""trained_model and onnx_model: a seeded PyTorch network and its self-contained ONNX export."""

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets import onnx_metrics
from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import FEATURES
from mlops_assets.lineage import git_commit
from mlops_assets.metadata import readable
from mlops_assets.training import modeling
from mlops_assets.training.training_data import TrainingData
from resources import ArtifactStore, MlflowRegistry

PARITY_TOLERANCE = 1e-5


class TrainConfig(dg.Config):
    """How the network learns; which rows it learns from is training_data's config."""

    epochs: int = 4
    """Passes over the training months; the weights of the best validation epoch are kept."""
    batch_size: int = 512
    learning_rate: float = 1e-3
    hidden: list[int] = [512, 512, 256]
    """Width of each hidden layer; wide enough that compression has arithmetic to save on a CPU."""
    seed: int = 7


@dg.asset(group_name="training", kinds={"pytorch", "mlflow"})
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    training_data: TrainingData,
    store: ArtifactStore,
    registry: MlflowRegistry,
) -> dg.Output[dict]:
    """The flight-delay network trained on the audited training rows, tracked as an MLflow run."""
    train_frame = store.read_frame(training_data.key)
    validation_frame = load_features(store, [training_data.validation_month])
    net = modeling.NetConfig(hidden=tuple(config.hidden))
    result = modeling.train(
        train_frame,
        validation_frame,
        net=net,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
    )
    lineage = {
        "git_commit": git_commit(),
        "data_hash": training_data.data_hash,
        "dagster_run_id": context.run_id,
        "train_months": ",".join(training_data.train_months),
        "validation_month": training_data.validation_month,
    }
    with registry.active_run(run_name=f"train {lineage['train_months']}") as run:
        import mlflow

        mlflow.log_params(
            {
                **config.model_dump(),
                "train_months": list(training_data.train_months),
                "validation_month": training_data.validation_month,
                "train_rows": len(train_frame),
                "served_share": round(training_data.served_share, 4),
            }
        )
        mlflow.set_tags(lineage)
        for row in result.history:
            mlflow.log_metrics({"train_loss": row["train_loss"], "val_auc": row["val_auc"]}, step=int(row["epoch"]))
        run_id = run.info.run_id
    checkpoint_key = f"models/{run_id}/checkpoint.pt"
    store.write_bytes(checkpoint_key, modeling.save_checkpoint(result, net))
    best = result.history[result.best_epoch - 1]
    info = {
        "run_id": run_id,
        "checkpoint_key": checkpoint_key,
        "training_data_key": training_data.key,
        "val_auc": best["val_auc"],
        "hidden": list(config.hidden),
        "parameters": modeling.parameter_count(result.model),
        **lineage,
    }
    return dg.Output(
        info,
        metadata=readable(
            {
                "mlflow_run_id": run_id,
                "val_auc": best["val_auc"],
                "best_epoch": result.best_epoch,
                "train_rows": len(train_frame),
                "parameters": info["parameters"],
                "data_hash": lineage["data_hash"],
                "git_commit": lineage["git_commit"],
                "history": dg.MetadataValue.md(
                    "| epoch | train loss | val AUC |\n|---|---|---|\n"
                    + "\n".join(
                        f"| {int(r['epoch'])} | {r['train_loss']:.4f} | {r['val_auc']:.4f} |" for r in result.history
                    )
                ),
            }
        ),
    )


def torch_parity(network: modeling.FlightDelayNet, prep: modeling.Preprocessing, onnx_bytes: bytes, rows) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's probabilities on `rows`."""
    session = onnx_metrics.session(onnx_bytes)
    onnx_scores = session.run(["probability"], modeling.onnx_feeds(rows))[0].reshape(-1)
    return float(np.abs(onnx_scores - modeling.predict(network, prep, rows)).max())


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


@dg.asset(
    group_name="training",
    kinds={"onnx", "mlflow"},
    check_specs=[
        dg.AssetCheckSpec(
            "onnx_parity",
            asset="onnx_model",
            blocking=True,
            description=f"ONNX and PyTorch agree on real rows to max abs diff {PARITY_TOLERANCE}.",
        )
    ],
)
def onnx_model(
    context: dg.AssetExecutionContext, trained_model: dict, store: ArtifactStore, registry: MlflowRegistry
) -> dg.Output[dict]:
    """The trained network as one ONNX file: raw feature columns in, probability of delay out.

    It is also the float32 baseline every compressed candidate is scored against.
    """
    network, prep = modeling.load_checkpoint(store.read_bytes(trained_model["checkpoint_key"]))
    network_proto = modeling.export_network(network)
    onnx_bytes = modeling.with_preprocessing(network_proto, prep)
    rows = load_features(store, [trained_model["validation_month"]]).head(2000)
    max_diff = torch_parity(network, prep, onnx_bytes, rows)

    run_id = trained_model["run_id"]
    key = f"models/{run_id}/model.onnx"
    path = store.write_bytes(key, onnx_bytes)
    # The network without the string front-end: what the int8 quantizers start from.
    network_key = f"models/{run_id}/network.onnx"
    network_path = store.write_bytes(network_key, network_proto.SerializeToString())
    model_uri = log_onnx(registry, run_id, onnx_bytes, {"onnx_parity_max_abs_diff": max_diff}, rows)
    info = {
        "candidate": "baseline",
        "precision": "float32",
        "run_id": run_id,
        "training_run_id": run_id,
        "onnx_key": key,
        "network_key": network_key,
        "checkpoint_key": trained_model["checkpoint_key"],
        "model_uri": model_uri,
        "size_bytes": len(onnx_bytes),
        "parameters": modeling.parameter_count(network),
        "hidden": list(network.config.hidden),
        "val_auc": trained_model["val_auc"],
    }
    yield dg.Output(
        info,
        metadata=readable(
            {
                "path": dg.MetadataValue.path(path),
                "network_path": dg.MetadataValue.path(network_path),
                "model_uri": model_uri,
                "size_bytes": len(onnx_bytes),
                "parameters": info["parameters"],
                "inputs": ", ".join(i.name for i in onnx_metrics.session(onnx_bytes).get_inputs()),
            }
        ),
    )
    yield dg.AssetCheckResult(
        check_name="onnx_parity",
        passed=max_diff <= PARITY_TOLERANCE,
        metadata=readable({"max_abs_diff": max_diff, "tolerance": PARITY_TOLERANCE, "rows": len(rows)}),
    )
