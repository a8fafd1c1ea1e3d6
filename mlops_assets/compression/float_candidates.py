"""What the float candidates (pruned, student) share: their frames, their publication, and skipping one
the model's family cannot make."""

import dagster as dg

from mlops_assets import onnx_metrics
from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import TARGET
from mlops_assets.training import onnx_export
from mlops_assets.training.assets import PARITY_ROWS, parity_result, torch_parity
from mlops_assets.training.families import Loaded
from mlops_assets.training.publish import publish_candidate
from mlops_assets.training.values import Candidate, CandidateOutcome, Skipped, TrainedModel
from resources import ArtifactStore, MlflowRegistry


def training_frames(store: ArtifactStore, trained_model: TrainedModel):
    return store.read_frame(trained_model.training_data_key), load_features(store, [trained_model.validation_month])


def onnx_val_auc(onnx_bytes: bytes, rows) -> float:
    return onnx_metrics.predictive(rows[TARGET].to_numpy(), onnx_metrics.scores(onnx_bytes, rows))["auc"]


def made(*candidates: CandidateOutcome) -> list[Candidate]:
    """The candidates that exist, in order: a family may have skipped some."""
    return [c for c in candidates if isinstance(c, Candidate)]


def skip(candidate: str, reason: str, family: str):
    """The outputs of a candidate the family cannot make: the reason as the value and in the UI, nothing to check."""
    yield dg.Output(Skipped(candidate, reason), metadata={"skipped": reason, "family": family})
    yield dg.AssetCheckResult(
        check_name="onnx_parity", passed=True, description=f"nothing to compare: {reason}", metadata={"skipped": reason}
    )


def publish_float(
    candidate: str,
    loaded: Loaded,
    *,
    trained_model: TrainedModel,
    baseline: Candidate,
    params: dict,
    history: list[dict],
    store: ArtifactStore,
    registry: MlflowRegistry,
):
    """Export a float candidate, check it against its family's own predictions, publish it in its own MLflow run."""
    family, model = loaded.family, loaded.model
    validation = load_features(store, [trained_model.validation_month])
    network_proto = family.export_network(model)
    onnx_bytes = onnx_export.with_preprocessing(network_proto, loaded.prep)
    max_diff = torch_parity(loaded, onnx_bytes, validation.head(PARITY_ROWS))
    val_auc = onnx_val_auc(onnx_bytes, validation)
    parameters = family.parameter_count(model)

    value, paths = publish_candidate(
        candidate,
        onnx_bytes,
        trained=trained_model,
        precision="float32",
        parameters=parameters,
        hidden=family.widths(model),
        val_auc=val_auc,
        metrics={
            "val_auc": val_auc,
            "parameters": parameters,
            "size_bytes": len(onnx_bytes),
            "onnx_parity_max_abs_diff": max_diff,
        },
        example=validation,
        store=store,
        registry=registry,
        params=params,
        history=history,
        network=network_proto.SerializeToString(),
        checkpoint=family.save(model, loaded.prep),
    )
    metadata = {
        "path": dg.MetadataValue.path(paths["model.onnx"]),
        "mlflow_run_id": value.run_id,
        "model_uri": value.model_uri,
        "hidden": str(value.hidden),
        "parameters": parameters,
        "parameters_vs_baseline": parameters / baseline.parameters,
        "size_bytes": len(onnx_bytes),
        "size_vs_baseline": len(onnx_bytes) / baseline.size_bytes,
        "val_auc": val_auc,
        "val_auc_vs_baseline": val_auc - baseline.val_auc,
    }
    return value, metadata, parity_result(max_diff, min(PARITY_ROWS, len(validation)))
