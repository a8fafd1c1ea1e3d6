"""pruned_model: the trained model with its weakest units removed step by step, fine-tuned after each step."""

import dagster as dg

from mlops_assets import onnx_metrics
from mlops_assets.compression.float_candidates import publish_float, skip, training_frames
from mlops_assets.features_spec import TARGET
from mlops_assets.metadata import readable
from mlops_assets.training import families
from mlops_assets.training.assets import parity_spec
from mlops_assets.training.families import Loaded
from mlops_assets.training.family import PRUNED
from mlops_assets.training.fit_loop import FitSettings
from mlops_assets.training.values import Candidate, TrainedModel
from resources import ArtifactStore, MlflowRegistry


class PruneConfig(dg.Config):
    keep_fraction: float = 0.3
    """Share (0-1] of each hidden layer's units left after the last step (0.3 keeps ~9% of hidden-to-hidden weights)."""
    steps: int = 3
    """Prune-then-fine-tune rounds; each keeps keep_fraction ** (1 / steps) of the units still there."""
    finetune_epochs: int = 2
    """Epochs on the training months after each step, so the remaining units take over the removed ones' work."""
    learning_rate: float = 1e-3
    batch_size: int = 512
    seed: int = 7


@dg.asset(group_name="compression", kinds={"pytorch", "onnx", "mlflow"}, check_specs=[parity_spec("pruned_model")])
def pruned_model(
    context: dg.AssetExecutionContext,
    config: PruneConfig,
    trained_model: TrainedModel,
    onnx_model: Candidate,
    store: ArtifactStore,
    registry: MlflowRegistry,
):
    """The trained model with its weakest hidden units removed step by step, fine-tuned after each step.

    Structured pruning: whole units go, so the ONNX file and the arithmetic shrink with them.
    Unstructured masks (zeroed single weights) are not offered: a dense ONNX file keeps every zero,
    so they save neither bytes nor time on onnxruntime's CPU kernels.
    """
    if not 0 < config.keep_fraction <= 1 or config.steps < 1:
        raise dg.Failure(f"keep_fraction must be in (0, 1] and steps >= 1; got {config.keep_fraction}, {config.steps}")
    family = families.family(trained_model.family)
    if PRUNED in family.unsupported:
        yield from skip(PRUNED, family.unsupported[PRUNED], family.name)
        return
    loaded = families.load_checkpoint(store.read_bytes(trained_model.checkpoint_key))
    prep, network = loaded.prep, loaded.model
    train_frame, validation = training_frames(store, trained_model)
    per_step = config.keep_fraction ** (1 / config.steps)
    history = []
    for step in range(1, config.steps + 1):
        network = family.prune(network, prep, per_step)
        before = onnx_metrics.predictive(validation[TARGET].to_numpy(), family.predict(network, prep, validation))
        pruned_only = {k: v.clone() for k, v in network.state_dict().items()}
        settings = FitSettings(config.finetune_epochs, config.batch_size, config.learning_rate, config.seed + step)
        result = family.fit(network, prep, train_frame, validation, settings)
        tuned, kept = result.history[result.best_epoch - 1]["val_auc"], "fine-tuned"
        if before["auc"] > tuned:
            # Epoch selection with the pruned weights as one more candidate: when the training months
            # drifted away from the validation month, fine-tuning can cost AUC there.
            network.load_state_dict(pruned_only)
            kept = "pruned"
        history.append(
            {
                "step": step,
                "hidden": str(family.widths(network)),
                "parameters": float(family.parameter_count(network)),
                "val_auc_pruned": before["auc"],
                "val_auc_finetuned": tuned,
                "kept": kept,
            }
        )
        context.log.info(f"prune step {step}: hidden {family.widths(network)}, val AUC {history[-1]}")
    value, metadata, check = publish_float(
        PRUNED,
        Loaded(family, network, prep),
        trained_model=trained_model,
        baseline=onnx_model,
        params={**config.model_dump(), "teacher_hidden": str(onnx_model.hidden)},
        history=history,
        store=store,
        registry=registry,
    )
    rows = [
        f"| {h['step']} | {h['hidden']} | {int(h['parameters']):,} | {h['val_auc_pruned']:.4f} | "
        f"{h['val_auc_finetuned']:.4f} | {h['kept']} |"
        for h in history
    ]
    table = "| step | hidden | parameters | val AUC pruned | val AUC fine-tuned | kept |\n|---|---|---|---|---|---|\n"
    table += "\n".join(rows)
    yield dg.Output(value, metadata=readable({**metadata, "steps": dg.MetadataValue.md(table)}))
    yield check
