"""drift_report: is the champion still looking at the data it learnt from?

Monthly partitions. It judges the month's served traffic (resources.ServedPredictions); drift_sensor
(sensors/drift.py) reads its metadata and requests retraining, and everything a person needs to
overrule it is in that metadata.
"""

import time
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from mlops_assets import months, onnx_metrics
from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import FEATURES, ROW_KEY
from mlops_assets.metadata import readable
from mlops_assets.monitoring import bands, detector, domain_classifier
from mlops_assets.monitoring.automation import on_new_data
from mlops_assets.monitoring.drift_metadata import classifier_metadata, columns_table, number
from mlops_assets.monitoring.served import served_rows
from mlops_assets.partitions import monthly_partitions
from resources import ArtifactStore, MlflowRegistry, ServedPredictions
from resources.mlflow_registry import CHAMPION

SERVED_CHECK = "served_traffic"


def drift_html_key(partition: str) -> str:
    return f"drift/{partition}.html"


def _link(store: ArtifactStore, key: str) -> dg.MetadataValue:
    uri = store.uri(key)
    return dg.MetadataValue.url(uri) if "://" in uri else dg.MetadataValue.path(uri)


_CALIBRATION, _CLASSIFIER, _RULE = bands.Calibration(), domain_classifier.DomainClassifier(), detector.VerdictRule()


class DriftConfig(dg.Config):
    """Each column's threshold comes from how far it moves inside the champion's own training window:
    30-day blocks of the window, scored against the whole window as a month is, give the column's
    natural variation; its threshold is 1.5 x the 0.9 quantile of those scores, with a floor. Over
    2013's ten three-month windows this keeps every month inside its window quiet but one (wind in
    Nov inside Oct-Dec, 0.247 against 0.213), and gives temperature a band of 0.9-1.4 reference
    standard deviations while distance, hour and day of week keep the floor (0.2).
    """

    num_method: str = bands.NUM_METHOD
    """Evidently distance method for numeric columns; 'wasserstein' is normed: in reference standard deviations."""
    cat_method: str = bands.CAT_METHOD
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
    prediction_method: str = detector.PREDICTION_METHOD
    """Evidently method comparing the champion's scores on reference rows and on the month's rows."""
    prediction_threshold: float = detector.PREDICTION_THRESHOLD
    """Prediction-drift threshold in prediction_method's unit; prediction drift alone marks the month drifted."""
    seed: int = 0
    """Seed of every sample, split, shuffle and classifier, so a month's report is reproducible."""
    min_served_rows: int = 200
    """Served rows the month needs to be judged on its traffic; with fewer, see ServedPredictions.batch_fallback."""

    def calibration(self) -> bands.Calibration:
        return bands.Calibration(
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

    def classifier(self) -> domain_classifier.DomainClassifier:
        return domain_classifier.DomainClassifier(
            columns=tuple(self.classifier_columns),
            threshold=self.classifier_threshold,
            rows=self.classifier_rows,
            max_depth=self.classifier_max_depth,
            seed=self.seed,
        )

    def rule(self) -> detector.VerdictRule:
        return detector.VerdictRule(min_importance_share=self.min_importance_share, drift_share=self.drift_share)


@dataclass(frozen=True)
class CurrentRows:
    frame: pd.DataFrame | None  # None: the month has no production data and nothing may stand in
    metadata: dict
    check: dg.AssetCheckResult


def _current_rows(partition: str, config: DriftConfig, served: ServedPredictions, store: ArtifactStore) -> CurrentRows:
    """The month's served traffic; its batch features only where the resource allows, and never silently."""
    log = served.read_month(partition)
    rows = served_rows(log.records, *months.bounds(partition))
    found = {
        "served_rows": len(rows.frame),
        "served_requests": rows.requests,
        "served_segments": log.segments,
        "served_model_versions": ", ".join(rows.model_versions) or "none",
        "corrupt_records": log.corrupt,
        "skipped_requests": rows.skipped,
        "served_location": served.location(),
    }

    def check(passed: bool, description: str) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            check_name=SERVED_CHECK,
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=found,
            description=description,
        )

    if len(rows.frame) >= config.min_served_rows:
        return CurrentRows(
            rows.frame[list(FEATURES)],
            {"current_source": "served_traffic", **found},
            check(True, f"{partition}: judged on {len(rows.frame)} served rows from {log.segments} segments"),
        )
    missing = (
        f"{partition} has {len(rows.frame)} served rows (< min_served_rows {config.min_served_rows}) "
        f"in {served.location()}"
    )
    if served.batch_fallback:
        return CurrentRows(
            load_features(store, [partition])[list(FEATURES)],
            {
                "current_source": "validated_features",
                "no_production_data": f"{missing}; batch features stood in",
                **found,
            },
            check(False, f"{missing}: judged on the month's batch features instead (batch_fallback is on)"),
        )
    return CurrentRows(
        None,
        {"current_source": "none", "no_production_data": f"{missing}; not judged (batch_fallback is off)", **found},
        check(False, f"{missing}: not judged, since batch data may not stand in (batch_fallback is off)"),
    )


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="monitoring",
    kinds={"evidently", "html"},
    deps=["validated_features", "champion_model"],
    automation_condition=on_new_data("validated_features"),
    check_specs=[
        dg.AssetCheckSpec(
            SERVED_CHECK,
            asset="drift_report",
            blocking=False,  # a warning a person sees, not a gate: nothing downstream waits on a drift report
            description="The month was judged on traffic the server answered, not on batch data standing in.",
            partitions_def=monthly_partitions,
        )
    ],
)
def drift_report(
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    store: ArtifactStore,
    served: ServedPredictions,
    registry: MlflowRegistry,
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
    current = _current_rows(context.partition_key, config, served, store)
    if current.frame is None:
        context.log.warning(current.metadata["no_production_data"])
        return dg.MaterializeResult(
            metadata=readable(
                {
                    "drifted": False,
                    **current.metadata,
                    "champion_version": version,
                    "reference_months": ", ".join(reference_months),
                    "elapsed_s": round(time.perf_counter() - started, 3),
                }
            ),
            check_results=[current.check],
        )
    if "no_production_data" in current.metadata:
        context.log.warning(current.metadata["no_production_data"])
    # The champion scores both sides (so a change of serving version cannot pose as drift) and the
    # shuffled reference rows that measure each column's importance to it.
    champion_session = onnx_metrics.session(registry.onnx_bytes(version))

    result = detector.compute_drift(
        reference,
        current.frame,
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
                "drifted_share": number(result.drifted_share),
                "drifted_count": result.drifted_count,
                "drift_share_threshold": config.drift_share,
                "drifted_columns": ", ".join(result.drifted_columns),
                "counted_columns": ", ".join(c.column for c in result.columns if c.counted),
                "drift_reasons": "; ".join(result.reasons) or "none",
                "ignored_drift": "; ".join(result.ignored) or "none",
                "min_importance_share": config.min_importance_share,
                "columns": columns_table(result),
                **classifier_metadata(result, config.classifier_threshold),
                "calibration": (
                    f"{calibration.factor:g} x q{calibration.quantile:g} of {calibration.block_days}-day blocks "
                    f"every {calibration.step_days} days of the reference, each against the whole reference; "
                    f"floors {calibration.num_floor:g} ({calibration.num_method}) / "
                    f"{calibration.cat_floor:g} ({calibration.cat_method})"
                ),
                "prediction_drifted": bool(prediction and prediction.drifted),
                "prediction_score": number(prediction.score) if prediction else dg.MetadataValue.null(),
                "prediction_threshold": config.prediction_threshold,
                "champion_version": version,
                "reference_months": ", ".join(reference_months),
                "reference_rows": len(reference),
                "current_rows": len(current.frame),
                **current.metadata,
                "report_url": dg.MetadataValue.url(report_url),
                "report": _link(store, drift_html_key(context.partition_key)),
                "elapsed_s": round(time.perf_counter() - started, 3),
            }
        ),
        check_results=[current.check],
    )
