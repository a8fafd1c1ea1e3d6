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


_CALIBRATION, _CLASSIFIER, _RULE = drift.Calibration(), drift.DomainClassifier(), drift.VerdictRule()


class DriftConfig(dg.Config):
    """Each column's threshold comes from how far it moves inside the champion's own training window:
    30-day blocks of the window, scored against the whole window as a month is, give the column's
    natural variation; its threshold is 1.5 x the 0.9 quantile of those scores, with a floor. Over
    2013's ten three-month windows this keeps every month inside its window quiet but one (wind in
    Nov inside Oct-Dec, 0.247 against 0.213), and gives temperature a band of 0.9-1.4 reference
    standard deviations while distance, hour and day of week keep the floor (0.2).
    """

    num_method: str = drift.NUM_METHOD
    """Evidently distance method for numeric columns; 'wasserstein' is normed: in reference standard deviations."""
    cat_method: str = drift.CAT_METHOD
    """Evidently distance method for categorical columns (carrier, origin, dest); Jensen-Shannon distance runs 0-1."""
    calibration_block_days: int = _CALIBRATION.block_days
    """Length in days of the reference blocks whose drift measures natural variation (at most half the window)."""
    calibration_step_days: int = _CALIBRATION.step_days
    """Days between the starts of consecutive calibration blocks (blocks overlap when smaller than block_days)."""
    calibration_quantile: float = _CALIBRATION.quantile
    """Quantile (0-1) of the block scores taken as the column's natural variation; 1.0 is the largest block."""
    calibration_factor: float = _CALIBRATION.factor
    """Multiplier on the natural variation: the column's threshold, in its method's unit."""
    num_floor: float = _CALIBRATION.num_floor
    """Lowest numeric threshold in num_method's unit (0.2: a fifth of a reference standard deviation)."""
    cat_floor: float = _CALIBRATION.cat_floor
    """Lowest categorical threshold in cat_method's unit (Jensen-Shannon distance, 0-1)."""
    calibration_rows: int = _CALIBRATION.rows
    """Reference rows sampled (seeded) for calibration."""
    column_thresholds: dict[str, float] = {}
    """Per-column overrides in the column's method's unit ({'temp': 2.0}); other columns stay calibrated."""
    classifier_threshold: float = _CLASSIFIER.threshold
    """Held-out ROC AUC (0.5-1) at which the domain classifier marks the month drifted; 2013's own months reach 0.62."""
    classifier_columns: list[str] = list(_CLASSIFIER.columns)
    """Columns the domain classifier sees; weather is left out, because it lets a classifier learn the calendar."""
    classifier_rows: int = _CLASSIFIER.rows
    """Rows sampled (seeded) from each side for the domain classifier; 30% of them are held out."""
    classifier_max_depth: int = _CLASSIFIER.max_depth
    """Depth of the classifier's trees: 3 sees three-column combinations without memorising single flights."""
    importance_rows: int = 5_000
    """Reference rows on which each column is shuffled to measure its importance to the champion."""
    min_importance_share: float = _RULE.min_importance_share
    """Share (0-1) of the champion's sensitivity a drifted column must carry to mark the month drifted on its own."""
    drift_share: float = _RULE.drift_share
    """Share of feature columns (0-1) whose drift marks the month drifted whatever their importance."""
    prediction_method: str = drift.PREDICTION_METHOD
    """Evidently method comparing the champion's scores on reference rows and on the month's rows."""
    prediction_threshold: float = drift.PREDICTION_THRESHOLD
    """Prediction-drift threshold in prediction_method's unit; prediction drift alone marks the month drifted."""
    seed: int = 0
    """Seed of every sample, split, shuffle and classifier, so a month's report is reproducible."""
    prediction_log_dir: str | None = None
    """Serving's prediction log folder; default $MLOPS_HOME/prediction_log."""
    min_logged_rows: int = 1
    """Logged requests of the month needed to use them as production data instead of the month's batch features."""

    def calibration(self) -> drift.Calibration:
        return drift.Calibration(
            num_method=self.num_method,
            cat_method=self.cat_method,
            block_days=self.calibration_block_days,
            step_days=self.calibration_step_days,
            quantile=self.calibration_quantile,
            factor=self.calibration_factor,
            num_floor=self.num_floor,
            cat_floor=self.cat_floor,
            rows=self.calibration_rows,
            seed=self.seed,
            overrides=dict(self.column_thresholds),
        )

    def classifier(self) -> drift.DomainClassifier:
        return drift.DomainClassifier(
            columns=tuple(self.classifier_columns),
            threshold=self.classifier_threshold,
            rows=self.classifier_rows,
            max_depth=self.classifier_max_depth,
            seed=self.seed,
        )

    def rule(self) -> drift.VerdictRule:
        return drift.VerdictRule(min_importance_share=self.min_importance_share, drift_share=self.drift_share)


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
                    "threshold_source": c.calibration.source if c.calibration else "fixed",
                    "natural_variation": _number(c.calibration.natural) if c.calibration else None,
                    "derivation": c.calibration.derivation if c.calibration else "prediction_threshold",
                    "importance": _number(c.importance) if c.importance is not None else None,
                    "drifted": c.drifted,
                    "counted": c.counted,
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
                dg.TableColumn("threshold_source", "string", description="calibrated, floor, override or fixed"),
                dg.TableColumn("natural_variation", "float", description="quantile of the reference blocks' scores"),
                dg.TableColumn("derivation", "string"),
                dg.TableColumn(
                    "importance", "float", description="share of the champion's sensitivity (mean |score change|)"
                ),
                dg.TableColumn("drifted", "bool"),
                dg.TableColumn("counted", "bool", description="drifted and important enough to mark the month"),
            ]
        ),
    )


def _classifier_metadata(result: drift.DriftResult, config: DriftConfig) -> dict:
    classifier = result.classifier
    if classifier is None:
        return {
            "classifier_drifted": False,
            "classifier_auc": dg.MetadataValue.null(),
            "classifier_threshold": config.classifier_threshold,
            "classifier_note": f"not run: a side has fewer than {drift.MIN_CLASSIFIER_ROWS} rows",
        }
    return {
        "classifier_drifted": classifier.drifted,
        "classifier_auc": classifier.auc,
        "classifier_threshold": classifier.threshold,
        "classifier_top_features": ", ".join(classifier.top()) or "none",
        "classifier_importances": dg.MetadataValue.md(
            "| column | held-out AUC lost when permuted |\n|---|---|\n"
            + "\n".join(f"| {c} | {v:.4f} |" for c, v in classifier.importances.items())
        ),
        "classifier_rows": f"{classifier.rows[0]} reference, {classifier.rows[1]} current",
    }


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
    """How far this month's production data has moved from the champion's training data, and whether it matters."""
    started = time.perf_counter()
    try:
        calibration, classifier, rule = config.calibration(), config.classifier(), config.rule()
    except ValueError as error:
        raise dg.Failure(str(error)) from error
    champion = registry.version_by_alias(CHAMPION)
    if champion is None:
        raise dg.Failure("no registry version holds alias 'champion': drift is measured against its training data")
    version = str(champion.version)
    reference_months = [m for m in champion.tags.get("train_months", "").split(",") if m]
    if not reference_months:
        raise dg.Failure(f"champion version {version} has no train_months tag to take reference data from")

    # flight_id stays on the reference: calibration places its rows in time by it.
    reference = load_features(store, reference_months)[[ROW_KEY, *FEATURES]]
    current, source = _current_rows(context, config, store)
    # The champion scores both sides (so a change of serving version cannot pose as drift) and the
    # shuffled reference rows that measure each column's importance to it.
    champion_session = onnx_metrics.session(registry.onnx_bytes(version))

    result = drift.compute_drift(
        reference,
        current,
        calibration,
        classifier=classifier,
        rule=rule,
        predict=lambda frame: onnx_metrics.predict(champion_session, frame),
        importance_rows=config.importance_rows,
        prediction_method=config.prediction_method,
        prediction_threshold=config.prediction_threshold,
    )
    prediction = result.prediction
    html = result.html.encode("utf-8")
    path = store.write_bytes(drift_html_key(context.partition_key), html)
    # The copy a person opens: MLflow's artifact view renders the HTML, one click from the asset page.
    report_url = registry.log_report(
        f"drift_report {context.partition_key}",
        {"drift_report.html": html},
        {"month": context.partition_key, "champion_version": version, "dagster_run_id": context.run_id},
    )
    context.log.info(
        f"{context.partition_key}: drifted={result.drifted} share={result.drifted_share:.2f} "
        f"classifier AUC {result.classifier.auc if result.classifier else float('nan'):.3f}; report {path}"
    )
    return dg.MaterializeResult(
        metadata=readable(
            {
                "drifted": result.drifted,
                "drifted_share": _number(result.drifted_share),
                "drifted_count": result.drifted_count,
                "drift_share_threshold": config.drift_share,
                "drifted_columns": ", ".join(result.drifted_columns),
                "counted_columns": ", ".join(c.column for c in result.columns if c.counted),
                "drift_reasons": "; ".join(result.reasons) or "none",
                "ignored_drift": "; ".join(result.ignored) or "none",
                "min_importance_share": config.min_importance_share,
                "columns": _columns_table(result),
                **_classifier_metadata(result, config),
                "calibration": (
                    f"{calibration.factor:g} x q{calibration.quantile:g} of {calibration.block_days}-day blocks "
                    f"every {calibration.step_days} days of the reference, each against the whole reference; "
                    f"floors {calibration.num_floor:g} ({calibration.num_method}) / "
                    f"{calibration.cat_floor:g} ({calibration.cat_method})"
                ),
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
