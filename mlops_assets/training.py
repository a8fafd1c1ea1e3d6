"""trained_model and onnx_model: a seeded PyTorch network and its self-contained ONNX export."""

import dagster as dg
import numpy as np

from mlops_assets import modeling
from mlops_assets.features import load_features
from mlops_assets.lineage import data_hash, git_commit
from resources import ArtifactStore, MlflowRegistry

PARITY_TOLERANCE = 1e-5


class TrainConfig(dg.Config):
    train_months: list[str] = ["2013-01", "2013-02", "2013-03"]
    """Partitions ('YYYY-MM') the network learns from."""
    validation_month: str = "2013-04"
    """Partition used to pick the best epoch."""
    epochs: int = 6
    batch_size: int = 512
    learning_rate: float = 1e-3
    hidden: list[int] = [256, 256, 128]
    """Width of each hidden layer."""
    seed: int = 7


@dg.asset(group_name="training", kinds={"pytorch", "mlflow"}, deps=["validated_features"])
def trained_model(
    context: dg.AssetExecutionContext, config: TrainConfig, store: ArtifactStore, registry: MlflowRegistry
) -> dg.Output[dict]:
    """The flight-delay network trained on a window of validated months, tracked as an MLflow run."""
    train_frame = load_features(store, config.train_months)
    validation_frame = load_features(store, [config.validation_month])
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
        "data_hash": data_hash(train_frame),
        "dagster_run_id": context.run_id,
        "train_months": ",".join(config.train_months),
        "validation_month": config.validation_month,
    }
    with registry.active_run(run_name=f"train {lineage['train_months']}") as run:
        import mlflow

        mlflow.log_params({**config.model_dump(), "train_rows": len(train_frame)})
        mlflow.set_tags(lineage)
        for row in result.history:
            mlflow.log_metrics({"train_loss": row["train_loss"], "val_auc": row["val_auc"]}, step=int(row["epoch"]))
        run_id = run.info.run_id
    checkpoint_key = f"models/{run_id}/checkpoint.pt"
    store.write_bytes(checkpoint_key, modeling.save_checkpoint(result, net))
    best = result.history[result.best_epoch - 1]
    info = {"run_id": run_id, "checkpoint_key": checkpoint_key, "val_auc": best["val_auc"], **lineage}
    return dg.Output(
        info,
        metadata={
            "mlflow_run_id": run_id,
            "val_auc": best["val_auc"],
            "best_epoch": result.best_epoch,
            "train_rows": len(train_frame),
            "parameters": sum(p.numel() for p in result.model.parameters()),
            "data_hash": lineage["data_hash"],
            "git_commit": lineage["git_commit"],
            "history": dg.MetadataValue.md(
                "| epoch | train loss | val AUC |\n|---|---|---|\n"
                + "\n".join(
                    f"| {int(r['epoch'])} | {r['train_loss']:.4f} | {r['val_auc']:.4f} |" for r in result.history
                )
            ),
        },
    )


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
    """The trained network as one ONNX file: raw feature columns in, probability of delay out."""
    import onnxruntime as ort

    network, prep = modeling.load_checkpoint(store.read_bytes(trained_model["checkpoint_key"]))
    onnx_bytes = modeling.export_onnx(network, prep)
    rows = load_features(store, [trained_model["validation_month"]]).head(2000)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_scores = session.run(["probability"], modeling.onnx_feeds(rows))[0].reshape(-1)
    max_diff = float(np.abs(onnx_scores - modeling.predict(network, prep, rows)).max())

    run_id = trained_model["run_id"]
    key = f"models/{run_id}/model.onnx"
    path = store.write_bytes(key, onnx_bytes)
    with registry.active_run(run_id=run_id):
        import mlflow
        import onnx

        logged = mlflow.onnx.log_model(
            onnx.load_from_string(onnx_bytes),
            name="model",
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
        )
        mlflow.log_metric("onnx_parity_max_abs_diff", max_diff)
    info = {"run_id": run_id, "onnx_key": key, "model_uri": logged.model_uri, "size_bytes": len(onnx_bytes)}
    yield dg.Output(
        info,
        metadata={
            "path": dg.MetadataValue.path(path),
            "model_uri": logged.model_uri,
            "size_bytes": len(onnx_bytes),
            "inputs": ", ".join(i.name for i in session.get_inputs()),
        },
    )
    yield dg.AssetCheckResult(
        check_name="onnx_parity",
        passed=max_diff <= PARITY_TOLERANCE,
        metadata={"max_abs_diff": max_diff, "tolerance": PARITY_TOLERANCE, "rows": len(rows)},
    )
