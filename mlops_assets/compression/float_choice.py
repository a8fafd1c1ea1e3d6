"""best_float_model: the float candidate the int8 quantizers start from."""

import dagster as dg

from mlops_assets.compression.float_candidates import made
from mlops_assets.metadata import readable
from mlops_assets.training.values import Candidate, CandidateOutcome, Skipped


class FloatChoiceConfig(dg.Config):
    max_val_auc_loss: float = 0.01
    """ROC AUC (absolute, validation month) a float candidate may lose against the baseline and still be quantized."""


@dg.asset(group_name="compression", kinds={"onnx"})
def best_float_model(
    context: dg.AssetExecutionContext,
    config: FloatChoiceConfig,
    onnx_model: Candidate,
    pruned_model: CandidateOutcome,
    student_model: CandidateOutcome,
) -> dg.Output[Candidate]:
    """The float candidate the int8 quantizers start from: the smallest one that holds its validation AUC.

    Quantization multiplies whatever size and speed a float candidate already saved, and cannot
    repair accuracy a candidate already lost, so the smallest candidate within the AUC budget goes.
    """
    candidates = made(onnx_model, pruned_model, student_model)
    bar = onnx_model.val_auc - config.max_val_auc_loss
    eligible = [c for c in candidates if c.val_auc >= bar]  # the baseline always is
    chosen = min(eligible, key=lambda c: c.size_bytes)
    table = "| candidate | val AUC | size KiB | parameters | eligible |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {c.candidate} | {c.val_auc:.4f} | {c.size_bytes / 1024:,.0f} | {c.parameters:,} | "
        f"{'yes' if c in eligible else 'no'} |"
        for c in candidates
    )
    skipped = [f"| {s.candidate} | - | - | - | skipped: {s.reason} |" for s in (pruned_model, student_model)
               if isinstance(s, Skipped)]  # fmt: skip
    table += "".join(f"\n{row}" for row in skipped)
    return dg.Output(
        chosen,
        metadata=readable(
            {
                "chosen": chosen.candidate,
                "rule": (
                    f"smallest float candidate with validation AUC >= {bar:.4f} (baseline - {config.max_val_auc_loss})"
                ),
                "candidates": dg.MetadataValue.md(table),
            }
        ),
    )
