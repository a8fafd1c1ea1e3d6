"""drift_report and live_performance: is the champion still looking at the data it learnt from, and is it still right?

Both are monthly partitions. drift_sensor and live_performance_sensor (sensors/drift.py) read their
metadata and request retraining; everything a person needs to overrule them is in that metadata.
"""

import time

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets import drift, onnx_metrics
from mlops_assets.features import load_features
from mlops_assets.features_spec import FEATURES, ROW_KEY, TARGET
from mlops_assets.inference import predictions_key
from mlops_assets.metadata import readable
from mlops_assets.partitions import monthly_partitions
from resources import ArtifactStore, MlflowRegistry
from resources.mlflow_registry import CHAMPION
from resources.settings import mlops_home


def drift_html_key(partition: str) -> str:
    return f"drift/{partition}.html"


def _link(store: ArtifactStore, key: str) -> dg.MetadataValue:
    uri = store.uri(key)
    return dg.MetadataValue.url(uri) if "://" in uri else dg.MetadataValue.path(uri)


def _number(value: float) -> float | None:
    return None if np.isnan(value) else readable({"v": float(value)})["v"]


def on_new_data(*triggers: str) -> dg.AutomationCondition:
    """A month's report reruns once `triggers` have a new materialization for that month.

    A quarantined month (a failed Great Expectations check) is not materialized, so it is never
    reported on. A new champion does not rerun anything: it would judge every month again at once
    and hand the sensors a burst of verdicts about the model that just replaced the one they judged.
    """
    return (
        dg.AutomationCondition.any_deps_updated().allow(dg.AssetSelection.assets(*triggers)).since_last_handled()
        # A quarantined month's latest validated_features run failed. (Checks are per asset, not per
        # month, so "checks passed" would let one bad month block all the others.) Only the month's
        # data counts: a refused challenger or a failed deployment says nothing about the data.
        & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.execution_failed()).ignore(
            dg.AssetSelection.assets("champion_model")
        )
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"new {' or '.join(triggers)}")


class DriftConfig(dg.Config):
    """Defaults calibrated on 2013. Against every three-month training window, no month inside it
    reaches 1.2 (the most is 0.98: temperature across a change of season) and no column but
    temperature passes 0.75 for the month after it, while a month of another season scores 1.5 to
    5.2 on temperature.
    """

    num_method: str = drift.NUM_METHOD
    """Evidently method for numeric columns; 'wasserstein' is normed: distance in reference standard deviations."""
    num_threshold: float = drift.NUM_THRESHOLD
    """Numeric threshold in num_method's unit: distance methods drift at or above it, p-value methods below it."""
    cat_method: str = drift.CAT_METHOD
    """Evidently method for categorical columns (carrier, origin, dest)."""
    cat_threshold: float = drift.CAT_THRESHOLD
    """Categorical threshold in cat_method's unit (Jensen-Shannon distance, 0-1; 2013 never passes 0.11)."""
    column_thresholds: dict[str, float] = {}
    """Per-column overrides ({'temp': 2.0}); columns not named keep num_threshold / cat_threshold."""
    drift_share: float = 0.1
    """Share of feature columns (0-1) that must drift for the month to count as drifted (0.1: any one of ten)."""
    prediction_method: str = drift.PREDICTION_METHOD
    """Evidently method comparing the champion's scores on reference rows and on the month's rows."""
    prediction_threshold: float = drift.PREDICTION_THRESHOLD
    """Prediction-drift threshold in prediction_method's unit; prediction drift alone marks the month drifted."""
    prediction_log_dir: str | None = None
    """Serving's prediction log folder; default $MLOPS_HOME/prediction_log."""
    min_logged_rows: int = 1
    """Logged requests of the month needed to use them as production data instead of the month's batch features."""

    def thresholds(self) -> drift.Thresholds:
        return drift.Thresholds(
            num_method=self.num_method,
            num_threshold=self.num_threshold,
            cat_method=self.cat_method,
            cat_threshold=self.cat_threshold,
            per_column=dict(self.column_thresholds),
        )


def _current_rows(
    context: dg.AssetExecutionContext, config: DriftConfig, store: ArtifactStore
) -> tuple[pd.DataFrame, dict]:
    """Production rows of the month: the serving log when it holds enough of them, else the month's features."""
    partition = context.partition_key
    directory = config.prediction_log_dir or str(mlops_home() / "prediction_log")
    logged = drift.read_prediction_log(directory, *drift.month_bounds(partition))
    if len(logged.frame) >= max(config.min_logged_rows, 1):
        return logged.frame, {
            "current_source": "prediction_log",
            "prediction_log": dg.MetadataValue.path(directory),
            "logged_segments": logged.segments,
            "logged_model_versions": ", ".join(logged.model_versions),
            "skipped_log_records": logged.skipped_records,
        }
    if len(logged.frame):
        context.log.info(f"{len(logged.frame)} logged rows < min_logged_rows {config.min_logged_rows}: using features")
    return load_features(store, [partition])[list(FEATURES)], {
        "current_source": "validated_features",
        "logged_rows": len(logged.frame),
    }


def _columns_table(result: drift.DriftResult) -> dg.MetadataValue:
    rows = [*result.columns, *([result.prediction] if result.prediction else [])]
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "column": c.column,
                    "method": c.method,
                    "kind": c.kind,
                    "score": _number(c.score),
                    "threshold": c.threshold,
                    "drifted": c.drifted,
                }
            )
            for c in rows
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("column", "string"),
                dg.TableColumn("method", "string"),
                dg.TableColumn("kind", "string", description="p_value: drifts below threshold; distance: at or above"),
                dg.TableColumn("score", "float"),
                dg.TableColumn("threshold", "float"),
                dg.TableColumn("drifted", "bool"),
            ]
        ),
    )


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="monitoring",
    kinds={"evidently", "html"},
    deps=["validated_features", "champion_model"],
    automation_condition=on_new_data("validated_features"),
)
def drift_report(
    context: dg.AssetExecutionContext, config: DriftConfig, store: ArtifactStore, registry: MlflowRegistry
) -> dg.MaterializeResult:
    """How far this month's production data has moved from the champion's training data, column by column."""
    started = time.perf_counter()
    try:
        thresholds = config.thresholds()
    except ValueError as error:
        raise dg.Failure(str(error)) from error
    champion = registry.version_by_alias(CHAMPION)
    if champion is None:
        raise dg.Failure("no registry version holds alias 'champion': drift is measured against its training data")
    version = str(champion.version)
    reference_months = [m for m in champion.tags.get("train_months", "").split(",") if m]
    if not reference_months:
        raise dg.Failure(f"champion version {version} has no train_months tag to take reference data from")

    reference = load_features(store, reference_months)[list(FEATURES)]
    current, source = _current_rows(context, config, store)
    # Prediction drift: the champion scores both sides, so a change of serving version cannot pose as drift.
    champion_session = onnx_metrics.session(registry.onnx_bytes(version))
    reference = reference.assign(**{drift.PREDICTION_COLUMN: onnx_metrics.predict(champion_session, reference)})
    current = current.assign(**{drift.PREDICTION_COLUMN: onnx_metrics.predict(champion_session, current)})

    result = drift.compute_drift(
        reference,
        current,
        thresholds,
        drift_share=config.drift_share,
        prediction_method=config.prediction_method,
        prediction_threshold=config.prediction_threshold,
    )
    prediction = result.prediction
    drifted = result.drifted_share >= config.drift_share or bool(prediction and prediction.drifted)
    reasons = [
        f"{c.column} {c.method} {c.score:.3g} {'<' if c.kind == drift.P_VALUE else '>='} {c.threshold:g}"
        for c in (*result.columns, *([prediction] if prediction else []))
        if c.drifted
    ]
    html = result.html.encode("utf-8")
    path = store.write_bytes(drift_html_key(context.partition_key), html)
    # The copy a person opens: MLflow's artifact view renders the HTML, one click from the asset page.
    report_url = registry.log_report(
        f"drift_report {context.partition_key}",
        {"drift_report.html": html},
        {"month": context.partition_key, "champion_version": version, "dagster_run_id": context.run_id},
    )
    context.log.info(f"{context.partition_key}: drifted={drifted} share={result.drifted_share:.2f}; report {path}")
    return dg.MaterializeResult(
        metadata=readable(
            {
                "drifted": drifted,
                "drifted_share": _number(result.drifted_share),
                "drifted_count": result.drifted_count,
                "drift_share_threshold": config.drift_share,
                "drifted_columns": ", ".join(result.drifted_columns),
                "drift_reasons": "; ".join(reasons) or "none",
                "columns": _columns_table(result),
                "prediction_drifted": bool(prediction and prediction.drifted),
                "prediction_score": _number(prediction.score) if prediction else dg.MetadataValue.null(),
                "prediction_threshold": config.prediction_threshold,
                "champion_version": version,
                "reference_months": ", ".join(reference_months),
                "reference_rows": len(reference),
                "current_rows": len(current),
                **source,
                "report_url": dg.MetadataValue.url(report_url),
                "report": _link(store, drift_html_key(context.partition_key)),
                "elapsed_s": round(time.perf_counter() - started, 3),
            }
        )
    )


class LivePerformanceConfig(dg.Config):
    auc_margin: float = 0.05
    """ROC AUC (absolute) the month may lose against the scoring version's evaluation-time AUC."""
    brier_margin: float = 0.03
    """Brier score (absolute) the month may gain against the evaluation-time Brier score."""
    calibration_bins: int = 10
    """Equal-width score bins for the calibration table and the expected calibration error."""
    min_labelled_rows: int = 500
    """Fewest predictions with a known outcome needed to judge the month."""


def calibration(labels: np.ndarray, scores: np.ndarray, bins: int) -> tuple[float, list[dict]]:
    """Expected calibration error (row-weighted mean |observed rate - mean score| over bins) and the bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    table, error = [], 0.0
    for b in range(bins):
        mask = index == b
        if not mask.any():
            continue
        predicted, observed = float(scores[mask].mean()), float(labels[mask].mean())
        error += mask.sum() / len(scores) * abs(observed - predicted)
        table.append(
            {"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "rows": int(mask.sum()), "predicted": predicted,
             "observed": observed}
        )  # fmt: skip
    return float(error), table


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="monitoring",
    kinds={"mlflow", "parquet"},
    deps=["batch_predictions", "validated_features"],
    automation_condition=on_new_data("batch_predictions", "validated_features"),
    # No asset check here: checks in this project are blocking gates, and a worse month must not
    # block anything. The verdict is in the metadata, and live_performance_sensor acts on it.
)
def live_performance(
    context: dg.AssetExecutionContext, config: LivePerformanceConfig, store: ArtifactStore, registry: MlflowRegistry
) -> dg.MaterializeResult:
    """How well the month's batch predictions did once the true outcomes arrived, against evaluation-time figures."""
    partition = context.partition_key
    if not store.exists(predictions_key(partition)):
        raise dg.Failure(f"batch_predictions has no partition {partition}: materialize it first")
    predictions = store.read_frame(predictions_key(partition))
    # The outcome (is_late) travels with the validated features here; in production it arrives weeks
    # after the prediction, which is why this asset is materialized separately from scoring.
    outcomes = load_features(store, [partition])[[ROW_KEY, TARGET]]
    joined = predictions.merge(outcomes, on=ROW_KEY, how="inner").dropna(subset=[TARGET, "score"])
    if len(joined) < config.min_labelled_rows:
        raise dg.Failure(
            f"only {len(joined)} of {len(predictions)} predictions of {partition} have an outcome yet "
            f"(< min_labelled_rows {config.min_labelled_rows}): try again when the labels have arrived"
        )
    versions = joined["model_version"].astype(str).value_counts()
    version = str(versions.index[0])  # one version scores a partition; the majority if a re-score was cut short
    tags = registry.client().get_model_version(registry.model_name, version).tags
    if "eval_auc" not in tags or "eval_brier" not in tags:
        raise dg.Failure(f"version {version} has no eval_auc/eval_brier tags to compare with")
    eval_auc, eval_brier = float(tags["eval_auc"]), float(tags["eval_brier"])

    labels, scores = joined[TARGET].to_numpy(int), joined["score"].to_numpy(float)
    live = onnx_metrics.predictive(labels, scores)
    ece, bins = calibration(labels, scores, config.calibration_bins)
    auc_drop, brier_rise = eval_auc - live["auc"], live["brier"] - eval_brier
    auc_text = f"AUC {live['auc']:.4f} vs evaluation {eval_auc:.4f}"
    brier_text = f"Brier {live['brier']:.4f} vs evaluation {eval_brier:.4f}"
    problems = []
    if auc_drop > config.auc_margin:
        problems.append(f"{auc_text}: dropped {auc_drop:.4f} > margin {config.auc_margin}")
    if brier_rise > config.brier_margin:
        problems.append(f"{brier_text}: rose {brier_rise:.4f} > margin {config.brier_margin}")
    degraded = bool(problems)
    reason = "; ".join(problems) or f"{auc_text}, {brier_text}: within margins"
    figures = {
        "auc": live["auc"],
        "brier": live["brier"],
        "expected_calibration_error": ece,
        "mean_score": float(scores.mean()),
        "observed_late_rate": float(labels.mean()),
        "eval_auc": eval_auc,
        "eval_brier": eval_brier,
        "auc_drop": auc_drop,
        "brier_increase": brier_rise,
        "auc_margin": config.auc_margin,
        "brier_margin": config.brier_margin,
    }
    return dg.MaterializeResult(
        metadata=readable(
            {
                **figures,
                "degraded": degraded,
                "reason": reason,
                "model_version": version,
                "evaluation_month": tags.get("evaluation_month", "unknown"),
                "labelled_rows": len(joined),
                "predictions": len(predictions),
                "calibration": dg.MetadataValue.md(
                    "| score bin | rows | mean score | observed late rate |\n|---|---|---|---|\n"
                    + "\n".join(
                        f"| {b['bin']} | {b['rows']} | {b['predicted']:.3f} | {b['observed']:.3f} |" for b in bins
                    )
                ),
            }
        ),
    )
