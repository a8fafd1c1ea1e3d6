"""live_performance: is each model version still right, now that the true outcomes have arrived?

It joins what the server answered (resources.ServedPredictions, by row key) and the month's batch
predictions, reported apart, with the outcomes that had arrived by the evaluation time, per model
version. The verdict is on served traffic when enough of it is labelled, else on the batch
predictions; live_performance_sensor (sensors/drift.py) acts on it.
"""

import dagster as dg

from mlops_assets import months
from mlops_assets.as_of import AsOfConfig
from mlops_assets.inference.assets import predictions_key
from mlops_assets.metadata import readable
from mlops_assets.monitoring.automation import on_new_data
from mlops_assets.monitoring.outcomes import outcomes_key
from mlops_assets.monitoring.performance import VersionPerformance, by_version, join_outcomes
from mlops_assets.monitoring.served import served_rows
from mlops_assets.partitions import monthly_partitions
from resources import ArtifactStore, MlflowRegistry, ServedPredictions


class LivePerformanceConfig(AsOfConfig):
    auc_margin: float = 0.05
    """ROC AUC (absolute) the month may lose against the scoring version's evaluation-time AUC."""
    brier_margin: float = 0.03
    """Brier score (absolute) the month may gain against the evaluation-time Brier score."""
    calibration_bins: int = 10
    """Equal-width score bins for the calibration table and the expected calibration error."""
    min_labelled_rows: int = 500
    """Fewest predictions of one version with a known outcome needed to judge it."""


def _table(figures: list[VersionPerformance]) -> dg.MetadataValue:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [
        "| source | version | predictions | labelled | unlabelled | AUC | Brier | calibration error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {f.source} | {f.version} | {f.predictions} | {f.labelled} | {f.unlabelled_share:.1%} | {number(f.auc)} "
        f"| {number(f.brier)} | {number(f.calibration_error)} |"
        for f in figures
    ]
    return dg.MetadataValue.md("\n".join(lines))


def _figures(f: VersionPerformance) -> dict:
    return {
        "source": f.source,
        "version": f.version,
        "predictions": f.predictions,
        "labelled": f.labelled,
        "auc": f.auc,
        "brier": f.brier,
        "calibration_error": f.calibration_error,
    }


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="monitoring",
    kinds={"mlflow", "parquet"},
    deps=["outcomes", "batch_predictions"],
    automation_condition=on_new_data("outcomes", "batch_predictions"),
    # No asset check here: checks in this project are blocking gates, and a worse month must not
    # block anything. The verdict is in the metadata, and live_performance_sensor acts on it.
)
def live_performance(
    context: dg.AssetExecutionContext,
    config: LivePerformanceConfig,
    store: ArtifactStore,
    served: ServedPredictions,
    registry: MlflowRegistry,
) -> dg.MaterializeResult:
    """How well each version's predictions of the month did once their outcomes arrived, against evaluation."""
    partition, as_of = context.partition_key, config.evaluation_time()
    if not store.exists(outcomes_key(partition)):
        raise dg.Failure(f"outcomes has no partition {partition}: materialize it first")
    outcomes = store.read_frame(outcomes_key(partition))

    traffic = served_rows(served.read_month(partition).records, *months.bounds(partition)).frame
    served_figures = by_version(
        join_outcomes(traffic, outcomes, as_of), "served", config.calibration_bins, config.min_labelled_rows
    )
    batch = store.read_frame(predictions_key(partition)) if store.exists(predictions_key(partition)) else None
    batch_figures = (
        by_version(join_outcomes(batch, outcomes, as_of), "batch", config.calibration_bins, config.min_labelled_rows)
        if batch is not None
        else []
    )
    # Served traffic is what clients received, so it is judged first; batch predictions only without it.
    judged = next((f for f in [*served_figures, *batch_figures] if f.auc is not None), None)
    if judged is None:
        counts = ", ".join(
            f"{f.source} v{f.version}: {f.labelled} of {f.predictions}" for f in served_figures + batch_figures
        )
        raise dg.Failure(
            f"no version's predictions of {partition} have {config.min_labelled_rows} outcomes by {as_of.isoformat()} "
            f"({counts or 'no served or batch predictions'}; min_labelled_rows {config.min_labelled_rows}): "
            "try again when the labels have arrived"
        )

    tags = registry.client().get_model_version(registry.model_name, judged.version).tags
    if "eval_auc" not in tags or "eval_brier" not in tags:
        raise dg.Failure(f"version {judged.version} has no eval_auc/eval_brier tags to compare with")
    eval_auc, eval_brier = float(tags["eval_auc"]), float(tags["eval_brier"])
    auc_drop, brier_rise = eval_auc - judged.auc, judged.brier - eval_brier
    auc_text = f"{judged.source} v{judged.version} AUC {judged.auc:.4f} vs evaluation {eval_auc:.4f}"
    brier_text = f"Brier {judged.brier:.4f} vs evaluation {eval_brier:.4f}"
    problems = []
    if auc_drop > config.auc_margin:
        problems.append(f"{auc_text}: dropped {auc_drop:.4f} > margin {config.auc_margin}")
    if brier_rise > config.brier_margin:
        problems.append(f"{brier_text}: rose {brier_rise:.4f} > margin {config.brier_margin}")
    return dg.MaterializeResult(
        metadata=readable(
            {
                "auc": judged.auc,
                "brier": judged.brier,
                "expected_calibration_error": judged.calibration_error,
                "mean_score": judged.mean_score,
                "observed_late_rate": judged.observed_rate,
                "eval_auc": eval_auc,
                "eval_brier": eval_brier,
                "auc_drop": auc_drop,
                "brier_increase": brier_rise,
                "auc_margin": config.auc_margin,
                "brier_margin": config.brier_margin,
                "degraded": bool(problems),
                "reason": "; ".join(problems) or f"{auc_text}, {brier_text}: within margins",
                "model_version": judged.version,
                "judged_source": judged.source,
                "evaluation_month": tags.get("evaluation_month", "unknown"),
                "labelled_rows": judged.labelled,
                "predictions": judged.predictions,
                "unlabelled_share": judged.unlabelled_share,
                "served_rows": len(traffic),
                "as_of": as_of.isoformat(),
                "versions": _table(served_figures + batch_figures),
                # The same figures as data, for the demo and any reader that must not parse the table.
                "version_figures": dg.MetadataValue.json([_figures(f) for f in served_figures + batch_figures]),
                "calibration": dg.MetadataValue.md(
                    "| score bin | rows | mean score | observed late rate |\n|---|---|---|---|\n"
                    + "\n".join(
                        f"| {b['bin']} | {b['rows']} | {b['predicted']:.3f} | {b['observed']:.3f} |"
                        for b in judged.bins
                    )
                ),
            }
        ),
    )
