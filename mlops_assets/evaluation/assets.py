"""evaluation_report: the challenger (the scorecard's winner) and the champion, side by side on one held-out month."""

from dataclasses import dataclass

import dagster as dg

from mlops_assets import months, onnx_metrics
from mlops_assets.compression.model_scorecard import Scorecard
from mlops_assets.features.assets import load_features
from mlops_assets.metadata import readable
from resources import ArtifactStore, MlflowRegistry
from resources.mlflow_registry import CHAMPION

FIGURES = (
    ("auc", "ROC AUC"),
    ("accuracy", "accuracy"),
    ("f1", "F1"),
    ("brier", "Brier score"),
    ("latency_p50_ms", "p50 latency, batch 1 (ms)"),
    ("latency_p99_ms", "p99 latency, batch 1 (ms)"),
    ("throughput_rows_per_s", "rows/s at batch 256"),
    ("size_bytes", "file size (bytes)"),
)


class EvaluationConfig(dg.Config):
    evaluation_month: str = months.FIRST_WINDOW.evaluation_month
    """Held-out partition ('YYYY-MM') neither training nor epoch selection has seen."""
    latency_runs: int = 300
    """Single-row calls timed for the p50/p99 latency."""
    throughput_batch: int = 256


@dataclass(frozen=True)
class Evaluation:
    """The challenger's and the champion's figures (FIGURES keys) on the same held-out month."""

    evaluation_month: str
    rows: int
    candidate: str
    challenger: dict[str, float]
    champion: dict[str, float] | None
    champion_version: str | None
    """The version holding alias `champion` when it was measured; None before the first promotion."""


def comparison_table(challenger: dict, champion: dict | None) -> str:
    header = "| figure | challenger | champion |\n|---|---|---|\n"
    rows = [
        f"| {label} | {challenger[key]:.4g} | {champion[key]:.4g} |"
        if champion
        else f"| {label} | {challenger[key]:.4g} | - |"
        for key, label in FIGURES
    ]
    return header + "\n".join(rows)


@dg.asset(group_name="evaluation", kinds={"onnx", "mlflow"}, deps=["validated_features"])
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    model_scorecard: Scorecard,
    store: ArtifactStore,
    registry: MlflowRegistry,
) -> dg.Output[Evaluation]:
    """How good and how fast the scorecard's winner is on a held-out month, next to today's champion."""
    frame = load_features(store, [config.evaluation_month])

    def measure(model: bytes) -> dict[str, float]:
        return onnx_metrics.evaluate(model, frame, config.latency_runs, config.throughput_batch)

    winner = model_scorecard.winner_candidate
    challenger = measure(store.read_bytes(winner.onnx_key))
    champion_version = registry.version_by_alias(CHAMPION)
    champion = measure(registry.onnx_bytes(champion_version.version)) if champion_version else None

    with registry.active_run(run_id=winner.run_id):
        import mlflow

        mlflow.log_metrics({f"eval_{key}": challenger[key] for key, _ in FIGURES})
        if champion:
            mlflow.log_metrics({f"champion_eval_{key}": champion[key] for key, _ in FIGURES})
        mlflow.set_tag("evaluation_month", config.evaluation_month)

    report = Evaluation(
        evaluation_month=config.evaluation_month,
        rows=len(frame),
        candidate=winner.candidate,
        challenger=challenger,
        champion=champion,
        champion_version=str(champion_version.version) if champion_version else None,
    )
    metadata = {key: challenger[key] for key, _ in FIGURES}
    if champion:
        metadata.update({f"champion_{key}": champion[key] for key, _ in FIGURES})
    return dg.Output(
        report,
        metadata=readable(
            {
                **metadata,
                "evaluation_month": config.evaluation_month,
                "rows": len(frame),
                "candidate": winner.candidate,
                "champion_version": report.champion_version or dg.MetadataValue.null(),
                "comparison": dg.MetadataValue.md(comparison_table(challenger, champion)),
            }
        ),
    )
