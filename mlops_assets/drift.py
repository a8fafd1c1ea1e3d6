"""Drift arithmetic behind drift_report: thresholds calibrated on the reference, Evidently runs, a domain
classifier, the champion's column importance, the month's verdict, and the serving log reader.

No Dagster here, so the rules read as rules and tests can call them directly. Evidently and
scikit-learn are imported inside the functions that need them (about 4 s), never when definitions load.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_assets.features_spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, ROW_KEY

PREDICTION_COLUMN = "prediction"

# Normed Wasserstein is the distance between the two distributions in units of the reference's
# standard deviation; Jensen-Shannon distance runs from 0 (same shares) to 1. Their thresholds are
# calibrated per column on the reference (Calibration below).
NUM_METHOD, CAT_METHOD = "wasserstein", "jensenshannon"
PREDICTION_METHOD, PREDICTION_THRESHOLD = "wasserstein", 0.5

# Evidently 0.7 reports a score per column but no drift flag. Each stat test decides on its own
# side of its threshold: p-value tests drift when the p-value is small, distance tests when the
# distance is large, and a few use <= or > rather than < or >=. Copied from each test's
# implementation in evidently/legacy/calculations/stattests/*.py (0.7.23).
P_VALUE, DISTANCE = "p_value", "distance"
_P_VALUE_BELOW = (
    "anderson",
    "chisquare",
    "es",
    "fisher_exact",
    "g_test",
    "mannw",
    "empirical_mmd",
    "t_test",
    "TVD",
    "z",
)
_DISTANCE_AT_OR_ABOVE = ("wasserstein", "jensenshannon", "kl_div", "psi", "hellinger")
_RULES: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "ks": (P_VALUE, operator.le),
    "cramer_von_mises": (P_VALUE, operator.le),
    **{name: (P_VALUE, operator.lt) for name in _P_VALUE_BELOW},
    **{name: (DISTANCE, operator.ge) for name in _DISTANCE_AT_OR_ABOVE},
    "ed": (DISTANCE, operator.gt),
}


def _rule(method: str) -> tuple[str, Callable[[float, float], bool]]:
    """The rule for a method, by short name ('ks') or by the display name Evidently reports when it picked it."""
    if method in _RULES:
        return _RULES[method]
    from evidently.legacy.calculations import stattests

    for test in vars(stattests).values():
        if isinstance(test, stattests.StatTest) and method == test.display_name and test.name in _RULES:
            return _RULES[test.name]
    raise ValueError(f"no drift rule for Evidently method {method!r}; known: {sorted(_RULES)}")


def method_kind(method: str) -> str:
    return _rule(method)[0]


def is_drifted(method: str, score: float, threshold: float) -> bool:
    """p-value methods drift when the p-value falls below the threshold, distance methods at or above it."""
    return bool(_rule(method)[1](score, threshold))


# --- thresholds calibrated on the reference itself ------------------------------------------------

MIN_BLOCK_ROWS = 200  # a block thinner than this measures sampling noise, not the data


@dataclass(frozen=True)
class Calibration:
    """How each column's threshold is derived from the reference window itself.

    Sliding blocks of `block_days` (capped at half the window, so a one-month window still has
    several) step through the window by `step_days`; each block is scored against the whole window
    with the column's method, exactly as drift_report scores a month. A column's threshold is
    `factor` x the `quantile` of its block scores, never below the floor of its kind; `overrides`
    replace the named columns only.
    """

    num_method: str = NUM_METHOD
    cat_method: str = CAT_METHOD
    block_days: int = 30
    step_days: int = 7
    quantile: float = 0.9
    factor: float = 1.5
    num_floor: float = 0.2
    cat_floor: float = 0.05
    rows: int = 20_000
    seed: int = 0
    overrides: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.overrides) - set(FEATURES))
        if unknown:
            raise ValueError(f"per-column thresholds name unknown columns {unknown}; feature columns: {list(FEATURES)}")
        for method in (self.num_method, self.cat_method):
            if method_kind(method) != DISTANCE:
                # A quantile x factor of p-values means nothing, and on a month of rows every p-value is ~0.
                raise ValueError(f"calibration needs a distance method, not the p-value method {method!r}")
        if not (0 < self.quantile <= 1 and self.factor > 0 and self.block_days >= 1 and self.step_days >= 1):
            raise ValueError("calibration needs 0 < quantile <= 1, factor > 0, block_days >= 1 and step_days >= 1")
        if self.rows < 10 * MIN_BLOCK_ROWS:
            raise ValueError(f"calibration rows must be at least {10 * MIN_BLOCK_ROWS}")

    def method(self, column: str) -> str:
        return self.num_method if column in NUMERIC_FEATURES else self.cat_method

    def floor(self, column: str) -> float:
        return self.num_floor if column in NUMERIC_FEATURES else self.cat_floor


@dataclass(frozen=True)
class ColumnThreshold:
    column: str
    method: str
    threshold: float
    natural: float  # the quantile of the block scores: how far the column moves inside the window
    blocks: int
    block_days: int
    source: str  # "calibrated", "floor" or "override"
    derivation: str


def column_score(method: str, column: str, reference: pd.Series, current: pd.Series) -> float:
    """The score Evidently's ValueDrift gives `current` against `reference` (same stat test, same NaN handling)."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Numerical if column in NUMERIC_FEATURES else ColumnType.Categorical
    if kind == ColumnType.Categorical:
        reference, current = reference.astype(str), current.astype(str)
    reference = reference.replace([-np.inf, np.inf], np.nan).dropna()
    current = current.replace([-np.inf, np.inf], np.nan).dropna()
    if reference.empty or current.empty:
        return float("nan")
    test = get_stattest(reference, current, kind, method)
    return _finite(test(reference, current, kind, None).drift_score)


def flight_days(frame: pd.DataFrame) -> np.ndarray:
    """Day of each row counted from the frame's first day, read from flight_id ('YYYY-MM-DD/...')."""
    if ROW_KEY not in frame:
        raise ValueError(f"calibration needs the reference's {ROW_KEY} column to place rows in time")
    dates = pd.to_datetime(frame[ROW_KEY].astype(str).str[:10], format="%Y-%m-%d", errors="coerce")
    if dates.isna().all():
        raise ValueError(f"no date in the reference's {ROW_KEY} values")
    dates = dates.fillna(dates.min())
    return ((dates - dates.min()).dt.days).to_numpy()


def calibrate(reference: pd.DataFrame, calibration: Calibration) -> dict[str, ColumnThreshold]:
    """Each feature column's threshold, from how far its blocks of the reference move from the whole."""
    rng = np.random.default_rng(calibration.seed)
    if len(reference) > calibration.rows:
        reference = reference.iloc[np.sort(rng.choice(len(reference), calibration.rows, replace=False))]
    days = flight_days(reference)
    span = int(days.max()) + 1
    length = max(1, min(calibration.block_days, span // 2))
    # Blocks from the first day on, and one that ends on the last: a month just before or after the
    # window sits at one of its ends, which is where the window's own movement is largest.
    starts = sorted({*range(0, span - length + 1, calibration.step_days), span - length})
    masks = [(days >= s) & (days < s + length) for s in starts]
    masks = [m for m in masks if m.sum() >= MIN_BLOCK_ROWS]
    thresholds = {}
    for column in FEATURES:
        method, floor = calibration.method(column), calibration.floor(column)
        scores = [column_score(method, column, reference[column], reference[column][m]) for m in masks]
        scores = [s for s in scores if math.isfinite(s)]
        natural = float(np.quantile(scores, calibration.quantile)) if scores else float("nan")
        calibrated = calibration.factor * natural
        basis = (
            f"{calibration.factor:g} x q{calibration.quantile:g} of {len(scores)} {length}-day blocks "
            f"({natural:.3g}) = {calibrated:.3g}"
            if scores
            else "no block of the reference to calibrate on"
        )
        if column in calibration.overrides:
            threshold, source, text = float(calibration.overrides[column]), "override", f"override; calibrated: {basis}"
        elif not math.isfinite(calibrated) or calibrated < floor:
            threshold, source, text = floor, "floor", f"floor {floor:g} (calibrated: {basis})"
        else:
            threshold, source, text = calibrated, "calibrated", basis
        thresholds[column] = ColumnThreshold(
            column=column,
            method=method,
            threshold=round(threshold, 4),
            natural=natural,
            blocks=len(scores),
            block_days=length,
            source=source,
            derivation=text,
        )
    return thresholds


# --- the domain classifier -----------------------------------------------------------------------

# Weather is left out by default: it is a property of the hour it was measured in, so a classifier
# that sees it learns the calendar and tells any month from any other (2013: AUC 0.76-0.80 for a
# month inside its own window). The per-column tests with calibrated bands watch the weather.
SCHEDULE_COLUMNS = ("hour", "day_of_week", "distance", "carrier", "origin", "dest")
MAX_CATEGORIES = 254  # HistGradientBoosting's limit is 255 bins; one is left for "other"
IMPORTANCE_ROWS = 4_000  # held-out rows the classifier's permutation importance is measured on
MIN_CLASSIFIER_ROWS = 50  # each side; fewer cannot be split into a training and a held-out part


@dataclass(frozen=True)
class DomainClassifier:
    """A seeded gradient-boosted classifier trained to tell reference rows from current rows."""

    columns: tuple[str, ...] = SCHEDULE_COLUMNS
    threshold: float = 0.65
    rows: int = 20_000
    max_depth: int = 3
    max_iter: int = 100
    test_share: float = 0.3
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.columns) - set(FEATURES))
        if unknown or not self.columns:
            raise ValueError(f"classifier columns {list(self.columns)} must be feature columns: {list(FEATURES)}")
        if not (0.5 <= self.threshold <= 1 and 0 < self.test_share < 1 and self.rows >= 100):
            raise ValueError("classifier needs 0.5 <= threshold <= 1, 0 < test_share < 1 and rows >= 100")


@dataclass(frozen=True)
class ClassifierResult:
    auc: float  # held-out ROC AUC of telling current rows from reference rows; 0.5: indistinguishable
    threshold: float
    drifted: bool
    importances: dict[str, float]  # held-out AUC lost when the column is permuted, largest first
    rows: tuple[int, int]  # (reference, current) rows the classifier saw
    columns: tuple[str, ...]

    def top(self, count: int = 3, min_importance: float = 0.005) -> list[str]:
        return [c for c, v in list(self.importances.items())[:count] if v >= min_importance]


def _sample(frame: pd.DataFrame, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    return frame.iloc[np.sort(rng.choice(len(frame), rows, replace=False))] if len(frame) > rows else frame


def domain_classifier(reference: pd.DataFrame, current: pd.DataFrame, settings: DomainClassifier) -> ClassifierResult:
    """Held-out ROC AUC of a classifier telling current rows from reference rows, and what separates them."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(settings.seed)
    columns = list(settings.columns)
    reference = _sample(reference[columns], settings.rows, rng)
    current = _sample(current[columns], settings.rows, rng)
    frame = pd.concat([reference, current], ignore_index=True)
    for column in columns:
        if column in CATEGORICAL_FEATURES:
            values = frame[column].astype(str)
            keep = values.value_counts().index[:MAX_CATEGORIES]
            frame[column] = pd.Categorical(values.where(values.isin(keep), "(other)"))
        else:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    labels = np.r_[np.zeros(len(reference), dtype=int), np.ones(len(current), dtype=int)]
    seed = int(settings.seed)
    x_train, x_test, y_train, y_test = train_test_split(
        frame, labels, test_size=settings.test_share, stratify=labels, random_state=seed
    )
    model = HistGradientBoostingClassifier(
        max_depth=settings.max_depth,
        max_iter=settings.max_iter,
        categorical_features="from_dtype",
        class_weight="balanced",  # a short current month must not look like "always reference"
        early_stopping=False,
        random_state=seed,
    ).fit(x_train, y_train)
    auc = float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))
    # Bounded: permuting 12k held-out rows three times per column would cost more than the fit.
    sample = min(1.0, IMPORTANCE_ROWS / len(x_test))
    permuted = permutation_importance(
        model, x_test, y_test, scoring="roc_auc", n_repeats=2, max_samples=sample, random_state=seed
    )
    importances = dict(
        sorted(
            ((c, float(v)) for c, v in zip(columns, permuted.importances_mean, strict=True)),
            key=lambda item: -item[1],
        )
    )
    return ClassifierResult(
        auc=auc,
        threshold=settings.threshold,
        drifted=auc >= settings.threshold,
        importances=importances,
        rows=(len(reference), len(current)),
        columns=tuple(columns),
    )


# --- what matters to the model -------------------------------------------------------------------


def model_importance(
    predict: Callable[[pd.DataFrame], np.ndarray], reference: pd.DataFrame, rows: int = 5_000, seed: int = 0
) -> dict[str, float]:
    """Each column's share (0-1, summing to 1) of the model's sensitivity: the mean |change in score|
    when that column alone is shuffled across reference rows. Needs no labels, so it says what moves
    the model's output, which is what drift in that column would move."""
    rng = np.random.default_rng(seed)
    sample = _sample(reference[list(FEATURES)], rows, rng).reset_index(drop=True)
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


def _finite(value) -> float:
    # Evidently hands back np.float64 (not JSON-safe) and NaN for an empty column.
    value = float(value)
    return value if math.isfinite(value) else float("nan")


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
    thresholds = calibrate(reference, calibration)
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
            share, count = _finite(metric["value"]["share"]), int(metric["value"]["count"])
        elif config["type"].endswith(":ValueDrift"):
            method, threshold, score = config["method"], float(config["threshold"]), _finite(metric["value"])
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


# --- the serving prediction log (format: serving/prediction_log.py) ------------------------------

SEGMENT_GLOB = "predictions-*.jsonl"  # closed segments only: open ones end in .jsonl.open


def month_bounds(partition: str) -> tuple[datetime, datetime]:
    """[start, end) of a 'YYYY-MM' partition in UTC."""
    start = datetime.strptime(partition, "%Y-%m").replace(tzinfo=UTC)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def _segment_opened(path: Path) -> datetime | None:
    try:
        return datetime.strptime(path.name.split("-")[1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except (IndexError, ValueError):
        return None


def _timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class LoggedRows:
    frame: pd.DataFrame  # the feature columns, as the server received them
    segments: int
    skipped_records: int  # records in the period without every feature column (another model's traffic)
    model_versions: list[str]


def read_prediction_log(directory: str | Path, start: datetime, end: datetime) -> LoggedRows:
    """Rows the server logged with start <= ts < end, one row per element of each request's batch."""
    directory = Path(directory)
    paths: Iterable[Path] = sorted(directory.glob(SEGMENT_GLOB)) if directory.is_dir() else []
    columns: dict[str, list] = {c: [] for c in FEATURES}
    segments, skipped, versions = 0, 0, set()
    for path in paths:
        opened = _segment_opened(path)
        # A segment only holds records written after it was opened (give or take the writer's
        # buffer), so one opened a day past the period cannot hold any of its rows.
        if opened is not None and (opened - end).total_seconds() > 86400:
            continue
        segments += 1
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                record = json.loads(line)
                if not start <= _timestamp(record["ts"]) < end:
                    continue
                inputs = record.get("inputs", {})
                if any(c not in inputs for c in FEATURES) or len({len(inputs[c]) for c in FEATURES}) != 1:
                    skipped += 1
                    continue
                for column in FEATURES:
                    columns[column].extend(inputs[column])
                versions.add(str(record.get("model_version")))
    frame = pd.DataFrame(columns)
    for column in NUMERIC_FEATURES:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return LoggedRows(frame=frame, segments=segments, skipped_records=skipped, model_versions=sorted(versions))
