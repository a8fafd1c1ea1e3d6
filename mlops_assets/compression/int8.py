"""int8_dynamic_model and int8_static_model: the best float candidate quantized by onnxruntime."""

import dagster as dg
import numpy as np

from mlops_assets import onnx_metrics
from mlops_assets.compression import quantization
from mlops_assets.compression.float_candidates import onnx_val_auc
from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import TARGET
from mlops_assets.metadata import readable
from mlops_assets.training import families, onnx_export
from mlops_assets.training.assets import PARITY_ROWS
from mlops_assets.training.publish import publish_candidate
from mlops_assets.training.values import Candidate, TrainedModel
from resources import ArtifactStore, MlflowRegistry


class QuantizeConfig(dg.Config):
    per_channel: bool = False
    """One scale per output unit instead of per tensor: a little more accurate, a little slower on CPU."""
    reduce_range: bool = False
    """7-bit weights: set on x86 CPUs without VNNI (pre-Cascade Lake, pre-Zen4), where 8-bit products can saturate."""
    parity_mean_tolerance: float = 0.02
    """Largest mean |int8 - float| probability (0-1) on validation rows the parity check accepts: calibration shift."""
    parity_auc_tolerance: float = 0.005
    """Largest |int8 - float| ROC AUC on the same rows the parity check accepts: ranking change."""


class StaticQuantizeConfig(QuantizeConfig):
    calibration_rows: int = 2048
    """Rows sampled from the training months to calibrate activation ranges (MinMax)."""
    calibration_batch: int = 256
    """Rows per calibration batch fed to onnxruntime."""
    op_types: list[str] = ["Gemm", "Relu"]
    """Operators given QDQ pairs: the dense layers; NaN imputation, scaling and embeddings stay float."""
    seed: int = 7


def _int8_parity_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        "onnx_parity",
        asset=asset,
        blocking=True,
        description="int8 and its float32 source agree on validation rows: mean |probability diff| and |AUC diff| "
        "within the configured tolerances (see metadata).",
    )


def _publish_int8(
    candidate: str,
    network_int8,
    source: Candidate,
    config: QuantizeConfig,
    *,
    trained_model: TrainedModel,
    params: dict,
    store: ArtifactStore,
    registry: MlflowRegistry,
):
    """Attach the float front-end, compare with the float source, publish in its own MLflow run."""
    prep = families.load_checkpoint(store.read_bytes(source.checkpoint_key)).prep
    onnx_bytes = onnx_export.with_preprocessing(network_int8, prep)
    float_bytes = store.read_bytes(source.onnx_key)
    validation = load_features(store, [trained_model.validation_month])
    rows = validation.head(PARITY_ROWS)
    int8_scores, float_scores = onnx_metrics.scores(onnx_bytes, rows), onnx_metrics.scores(float_bytes, rows)
    diff = np.abs(int8_scores - float_scores)
    labels = rows[TARGET].to_numpy()
    auc_diff = abs(
        onnx_metrics.predictive(labels, int8_scores)["auc"] - onnx_metrics.predictive(labels, float_scores)["auc"]
    )
    parity = {
        "p99_abs_diff": float(np.percentile(diff, 99)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "auc_abs_diff": float(auc_diff),
    }
    val_auc = onnx_val_auc(onnx_bytes, validation)

    value, paths = publish_candidate(
        candidate,
        onnx_bytes,
        trained=trained_model,
        precision="int8",
        parameters=source.parameters,
        hidden=source.hidden,
        val_auc=val_auc,
        metrics={"val_auc": val_auc, "size_bytes": len(onnx_bytes), **{f"parity_{k}": v for k, v in parity.items()}},
        example=validation,
        store=store,
        registry=registry,
        params=params,
        source=source,
    )
    metadata = {
        "path": dg.MetadataValue.path(paths["model.onnx"]),
        "mlflow_run_id": value.run_id,
        "model_uri": value.model_uri,
        "source": source.candidate,
        "size_bytes": len(onnx_bytes),
        "size_vs_source": len(onnx_bytes) / source.size_bytes,
        "val_auc": val_auc,
        "val_auc_vs_source": val_auc - source.val_auc,
    }
    # Mean and AUC, not max: rows outside the calibrated range saturate, so a few rows move by
    # 0.05-0.15 while the ranking and the average probability hold; p99 and max are reported.
    passed = parity["mean_abs_diff"] <= config.parity_mean_tolerance and auc_diff <= config.parity_auc_tolerance
    check = dg.AssetCheckResult(
        check_name="onnx_parity",
        passed=passed,
        metadata=readable(
            {
                **parity,
                "mean_tolerance": config.parity_mean_tolerance,
                "auc_tolerance": config.parity_auc_tolerance,
                "reference": f"{source.candidate} (float32 ONNX)",
                "rows": len(rows),
            }
        ),
    )
    return value, metadata, check


@dg.asset(group_name="compression", kinds={"onnx", "mlflow"}, check_specs=[_int8_parity_spec("int8_dynamic_model")])
def int8_dynamic_model(
    context: dg.AssetExecutionContext,
    config: QuantizeConfig,
    trained_model: TrainedModel,
    best_float_model: Candidate,
    store: ArtifactStore,
    registry: MlflowRegistry,
):
    """The best float candidate with int8 weights; activations are quantized per call (no calibration)."""
    import onnx

    network = onnx.load_from_string(store.read_bytes(best_float_model.network_key))
    quantized = quantization.quantize_dynamic_int8(
        network, per_channel=config.per_channel, reduce_range=config.reduce_range
    )
    value, metadata, check = _publish_int8(
        "int8_dynamic",
        quantized,
        best_float_model,
        config,
        trained_model=trained_model,
        params=config.model_dump(),
        store=store,
        registry=registry,
    )
    yield dg.Output(value, metadata=metadata)
    yield check


@dg.asset(group_name="compression", kinds={"onnx", "mlflow"}, check_specs=[_int8_parity_spec("int8_static_model")])
def int8_static_model(
    context: dg.AssetExecutionContext,
    config: StaticQuantizeConfig,
    trained_model: TrainedModel,
    best_float_model: Candidate,
    store: ArtifactStore,
    registry: MlflowRegistry,
):
    """The best float candidate in int8 QDQ form, activation ranges calibrated on rows of the training months."""
    import onnx

    network = onnx.load_from_string(store.read_bytes(best_float_model.network_key))
    prep = families.load_checkpoint(store.read_bytes(best_float_model.checkpoint_key)).prep
    train_frame = store.read_frame(trained_model.training_data_key)
    rows = train_frame.sample(n=min(config.calibration_rows, len(train_frame)), random_state=config.seed)
    batches = [
        prep.network_feeds(rows.iloc[start : start + config.calibration_batch])
        for start in range(0, len(rows), config.calibration_batch)
    ]
    quantized = quantization.quantize_static_int8(
        network, batches, op_types=config.op_types, per_channel=config.per_channel, reduce_range=config.reduce_range
    )
    value, metadata, check = _publish_int8(
        "int8_static",
        quantized,
        best_float_model,
        config,
        trained_model=trained_model,
        params={**config.model_dump(), "calibration_months": trained_model.train_months},
        store=store,
        registry=registry,
    )
    yield dg.Output(value, metadata=readable({**metadata, "calibration_rows": len(rows)}))
    yield check
