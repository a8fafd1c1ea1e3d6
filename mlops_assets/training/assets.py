"""trained_model and onnx_model: a seeded model of the configured family and its self-contained ONNX export."""

import dataclasses

import dagster as dg
import numpy as np

from mlops_assets import onnx_metrics
from mlops_assets.features.assets import load_features
from mlops_assets.lineage import git_commit
from mlops_assets.metadata import readable
from mlops_assets.training import families, onnx_export
from mlops_assets.training.families import Loaded
from mlops_assets.training.fit_loop import FitSettings
from mlops_assets.training.publish import publish_candidate
from mlops_assets.training.training_data import TrainingData
from mlops_assets.training.values import TrainedModel
from resources import ArtifactStore, MlflowRegistry

PARITY_TOLERANCE = 1e-5
PARITY_ROWS = 2000  # validation rows every float parity check compares on


class TrainConfig(dg.Config):
    """How the model learns; which rows it learns from is training_data's config."""

    family: str = "mlp"
    """Model family, a key of `mlops_assets.training.families.FAMILIES` ('mlp', 'logistic')."""
    epochs: int = 4
    """Passes over the training months; the weights of the best validation epoch are kept."""
    batch_size: int = 512
    learning_rate: float = 1e-3
    hidden: list[int] = [512, 512, 256]
    """Width of each hidden layer (families with hidden layers); wide enough that compression has arithmetic to
    save on a CPU."""
    seed: int = 7

    def settings(self) -> FitSettings:
        return FitSettings(self.epochs, self.batch_size, self.learning_rate, self.seed)


@dg.asset(group_name="training", kinds={"pytorch", "mlflow"})
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    training_data: TrainingData,
    store: ArtifactStore,
    registry: MlflowRegistry,
) -> dg.Output[TrainedModel]:
    """The configured model family trained on the audited training rows, tracked as an MLflow run."""
    try:
        family = families.family(config.family)
    except ValueError as error:
        raise dg.Failure(str(error)) from error
    train_frame = store.read_frame(training_data.key)
    validation_frame = load_features(store, [training_data.validation_month])
    result = families.train(
        config.family, train_frame, validation_frame, hidden=tuple(config.hidden), settings=config.settings()
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
        mlflow.set_tags({**lineage, "family": config.family})
        for row in result.history:
            mlflow.log_metrics({"train_loss": row["train_loss"], "val_auc": row["val_auc"]}, step=int(row["epoch"]))
        run_id = run.info.run_id
    checkpoint_key = f"models/{run_id}/checkpoint.pt"
    store.write_bytes(checkpoint_key, family.save(result.model, result.prep))
    best = result.history[result.best_epoch - 1]
    value = TrainedModel(
        family=config.family,
        run_id=run_id,
        checkpoint_key=checkpoint_key,
        training_data_key=training_data.key,
        val_auc=best["val_auc"],
        hidden=family.widths(result.model),
        parameters=family.parameter_count(result.model),
        **lineage,
    )
    return dg.Output(
        value,
        metadata=readable(
            {
                "mlflow_run_id": run_id,
                "family": config.family,
                "val_auc": best["val_auc"],
                "best_epoch": result.best_epoch,
                "train_rows": len(train_frame),
                "parameters": value.parameters,
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


def torch_parity(loaded: Loaded, onnx_bytes: bytes, rows) -> float:
    """Largest absolute difference between onnxruntime's and the family's own probabilities on `rows`."""
    session = onnx_metrics.session(onnx_bytes)
    onnx_scores = session.run(["probability"], onnx_export.onnx_feeds(rows))[0].reshape(-1)
    return float(np.abs(onnx_scores - loaded.family.predict(loaded.model, loaded.prep, rows)).max())


def parity_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        "onnx_parity",
        asset=asset,
        blocking=True,
        description=f"ONNX and the trained model agree on real rows to max abs diff {PARITY_TOLERANCE}.",
    )


def parity_result(max_diff: float, rows: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="onnx_parity",
        passed=max_diff <= PARITY_TOLERANCE,
        metadata=readable({"max_abs_diff": max_diff, "tolerance": PARITY_TOLERANCE, "rows": rows}),
    )


@dg.asset(group_name="training", kinds={"onnx", "mlflow"}, check_specs=[parity_spec("onnx_model")])
def onnx_model(
    context: dg.AssetExecutionContext, trained_model: TrainedModel, store: ArtifactStore, registry: MlflowRegistry
):
    """The trained model as one ONNX file: raw feature columns in, probability of delay out.

    It is also the float32 baseline every compressed candidate is scored against.
    """
    loaded = families.load_checkpoint(store.read_bytes(trained_model.checkpoint_key))
    network_proto = loaded.family.export_network(loaded.model)
    onnx_bytes = onnx_export.with_preprocessing(network_proto, loaded.prep)
    rows = load_features(store, [trained_model.validation_month]).head(PARITY_ROWS)
    max_diff = torch_parity(loaded, onnx_bytes, rows)
    candidate, paths = publish_candidate(
        "baseline",
        onnx_bytes,
        run_id=trained_model.run_id,  # the baseline is the training run's own model
        trained=trained_model,
        precision="float32",
        parameters=trained_model.parameters,
        hidden=trained_model.hidden,
        val_auc=trained_model.val_auc,
        metrics={"onnx_parity_max_abs_diff": max_diff},
        example=rows,
        store=store,
        registry=registry,
        network=network_proto.SerializeToString(),
    )
    candidate = dataclasses.replace(candidate, checkpoint_key=trained_model.checkpoint_key)
    yield dg.Output(
        candidate,
        metadata=readable(
            {
                "path": dg.MetadataValue.path(paths["model.onnx"]),
                "network_path": dg.MetadataValue.path(paths["network.onnx"]),
                "family": trained_model.family,
                "model_uri": candidate.model_uri,
                "size_bytes": candidate.size_bytes,
                "parameters": candidate.parameters,
                "inputs": ", ".join(i.name for i in onnx_metrics.session(onnx_bytes).get_inputs()),
            }
        ),
    )
    yield parity_result(max_diff, len(rows))
