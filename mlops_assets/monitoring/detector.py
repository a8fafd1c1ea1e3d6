"""The drift detector behind drift_report: Evidently scores every column against its calibrated band
(bands.py), the domain classifier looks at the columns together (domain_classifier.py), each column
gets its importance to the champion, and the month's verdict wants drift that matters.

No Dagster here, so the rules read as rules and tests can call them directly. Evidently and
scikit-learn are imported inside the functions that need them (about 4 s), never when definitions load.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlops_assets.features_spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from mlops_assets.monitoring.bands import Calibration, ColumnThreshold, calibrate
from mlops_assets.monitoring.domain_classifier import (
    MIN_CLASSIFIER_ROWS,
    ClassifierResult,
    DomainClassifier,
    domain_classifier,
)
from mlops_assets.monitoring.stattests import P_VALUE, finite, is_drifted, method_kind, sample_rows

PREDICTION_COLUMN = "prediction"
PREDICTION_METHOD, PREDICTION_THRESHOLD = "wasserstein", 0.5

# --- what matters to the model -------------------------------------------------------------------


def model_importance(
    predict: Callable[[pd.DataFrame], np.ndarray], reference: pd.DataFrame, rows: int = 5_000, seed: int = 0
) -> dict[str, float]:
    """Each column's share (0-1, summing to 1) of the model's sensitivity: the mean |change in score|
    when that column alone is shuffled across reference rows. Needs no labels, so it says what moves
    the model's output, which is what drift in that column would move."""
    rng = np.random.default_rng(seed)
    sample = sample_rows(reference[list(FEATURES)], rows, rng).reset_index(drop=True)
    base = np.asarray(predict(sample), dtype="float64")
    change = {}
    for column in FEATURES:
        shuffled = sample.assign(**{column: rng.permutation(sample[column].to_numpy())})
        change[column] = float(np.mean(np.abs(np.asarray(predict(shuffled), dtype="float64") - base)))
    total = sum(change.values())
    return {c: (v / total if total > 0 else 0.0) for c, v in change.items()}


# --- the month's verdict ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerdictRule:
    """When a month counts as drifted: any of these."""

    min_importance_share: float = 0.05  # a drifted column counts when it carries this share of the model
    drift_share: float = 0.3  # ...or this share of all columns drift, whatever their importance
    use_classifier: bool = True  # ...or the domain classifier tells the month from the reference
    use_prediction: bool = True  # ...or the champion's scores drift


@dataclass
class ColumnDrift:
    column: str
    method: str
    kind: str
    score: float
    threshold: float
    drifted: bool
    calibration: ColumnThreshold | None = None
    importance: float | None = None  # share of the champion's sensitivity (0-1); None: not measured
    counted: bool = False  # drifted, and important enough to mark the month drifted on its own


@dataclass
class DriftResult:
    columns: list[ColumnDrift]
    drifted_share: float  # Evidently's DriftedColumnsCount share over the feature columns
    drifted_count: int
    prediction: ColumnDrift | None
    html: str
    classifier: ClassifierResult | None = None
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # columns that drifted but carry too little of the model

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


def _column_reason(c: ColumnDrift) -> str:
    side = "<" if c.kind == P_VALUE else ">="
    text = f"{c.column} {c.method} {c.score:.3g} {side} {c.threshold:.3g}"
    return text if c.importance is None else f"{text} (importance {c.importance:.2f})"


def decide(result: DriftResult, rule: VerdictRule) -> DriftResult:
    """Set the month's verdict and its reasons in words on `result` (and return it)."""
    for c in result.columns:
        c.counted = c.drifted and (c.importance is None or c.importance >= rule.min_importance_share)
    counted = [c for c in result.columns if c.counted]
    below = [c for c in result.columns if c.drifted and not c.counted]
    broad = math.isfinite(result.drifted_share) and result.drifted_share >= rule.drift_share
    classifier = rule.use_classifier and result.classifier is not None and result.classifier.drifted
    prediction = rule.use_prediction and result.prediction is not None and result.prediction.drifted
    result.drifted = bool(counted or broad or classifier or prediction)
    reasons = [_column_reason(c) for c in counted]
    if result.drifted:  # every signal that fired, so a person sees the whole picture
        reasons += [f"{_column_reason(c)} below importance {rule.min_importance_share:g}" for c in below]
    if broad:
        reasons.append(
            f"{result.drifted_count} of {len(result.columns)} columns drifted (>= share {rule.drift_share:g})"
        )
    if classifier:
        top = ", ".join(result.classifier.top()) or "no single column"
        reasons.append(
            f"domain classifier AUC {result.classifier.auc:.3f} >= {result.classifier.threshold:g} (separated by {top})"
        )
    if prediction:
        reasons.append(_column_reason(result.prediction))
    result.reasons = reasons
    result.ignored = [] if result.drifted else [_column_reason(c) for c in below]
    return result


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    calibration: Calibration | None = None,
    *,
    classifier: DomainClassifier | None = None,
    rule: VerdictRule | None = None,
    predict: Callable[[pd.DataFrame], np.ndarray] | None = None,
    importance_rows: int = 5_000,
    prediction_method: str = PREDICTION_METHOD,
    prediction_threshold: float = PREDICTION_THRESHOLD,
) -> DriftResult:
    """Drift of `current` from `reference` (which needs flight_id, for calibration), and the verdict.

    Evidently scores each feature column against its calibrated threshold and writes the HTML; the
    domain classifier (None: DomainClassifier()) looks at the columns together. With `predict` (the
    champion's P(late) for a frame), the champion's scores are compared too and each column gets its
    importance to the champion, which decides whether its drift counts on its own.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    calibration = calibration or Calibration()
    classifier = classifier or DomainClassifier()
    rule = rule or VerdictRule()
    thresholds = calibrate(reference, calibration, current_rows=len(current))
    importance = model_importance(predict, reference, importance_rows, calibration.seed) if predict else None
    reference, current = reference[list(FEATURES)], current[list(FEATURES)]
    if predict is not None:
        reference = reference.assign(**{PREDICTION_COLUMN: predict(reference)})
        current = current.assign(**{PREDICTION_COLUMN: predict(current)})

    columns = [*FEATURES, *([PREDICTION_COLUMN] if predict is not None else [])]
    definition = DataDefinition(
        numerical_columns=[*NUMERIC_FEATURES, *([PREDICTION_COLUMN] if predict is not None else [])],
        categorical_columns=list(CATEGORICAL_FEATURES),
    )

    def dataset(frame: pd.DataFrame):
        frame = frame[columns].copy()
        for column in CATEGORICAL_FEATURES:
            frame[column] = frame[column].astype(str)
        return Dataset.from_pandas(frame, data_definition=definition)

    # Methods are pinned, not left to Evidently: it switches from p-values to distances at 1000
    # reference rows, which would silently change what every threshold means.
    metrics = [
        DataDriftPreset(
            columns=list(FEATURES),
            drift_share=rule.drift_share,  # only the HTML's "dataset drift" headline uses it
            num_method=calibration.num_method,
            cat_method=calibration.cat_method,
            # Every column spelled out, so the HTML shows the calibrated bands and Evidently's own
            # precedence rules never come into play.
            per_column_threshold={c: thresholds[c].threshold for c in FEATURES},
        )
    ]
    if predict is not None:
        metrics.append(ValueDrift(column=PREDICTION_COLUMN, method=prediction_method, threshold=prediction_threshold))
    snapshot = Report(metrics).run(dataset(current), dataset(reference))

    by_column: dict[str, ColumnDrift] = {}
    share, count = float("nan"), 0
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":DriftedColumnsCount"):
            share, count = finite(metric["value"]["share"]), int(metric["value"]["count"])
        elif config["type"].endswith(":ValueDrift"):
            method, threshold, score = config["method"], float(config["threshold"]), finite(metric["value"])
            name = config["column"]
            by_column[name] = ColumnDrift(
                column=name,
                method=method,
                kind=method_kind(method),
                score=score,
                threshold=threshold,
                drifted=is_drifted(method, score, threshold),
                calibration=thresholds.get(name),
                importance=importance.get(name) if importance else None,
            )
    result = DriftResult(
        columns=[by_column[c] for c in FEATURES],
        drifted_share=share,
        drifted_count=count,
        prediction=by_column.get(PREDICTION_COLUMN),
        html=snapshot.get_html_str(as_iframe=False),
        classifier=domain_classifier(reference, current, classifier)
        if rule.use_classifier and min(len(reference), len(current)) >= MIN_CLASSIFIER_ROWS
        else None,
    )
    return decide(result, rule)
