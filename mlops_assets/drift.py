"""Drift arithmetic behind drift_report: Evidently runs, per-column verdicts, and the serving log reader.

No Dagster here, so the rules read as rules and tests can call them directly. Evidently is imported
inside the functions that need it (about 4 s), never when definitions load.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from mlops_assets.features_spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES

PREDICTION_COLUMN = "prediction"

# Defaults, calibrated on 2013 (numbers in the DriftConfig docstrings). Normed Wasserstein is the
# distance between the two distributions in units of the reference's standard deviation.
NUM_METHOD, NUM_THRESHOLD = "wasserstein", 1.2
CAT_METHOD, CAT_THRESHOLD = "jensenshannon", 0.2
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


@dataclass(frozen=True)
class Thresholds:
    """Drift thresholds: a global value per column kind, and per-column overrides on top of it.

    Overrides only replace the named columns: every other column keeps its kind's global value,
    so tightening `temp` never silently resets the threshold of `visib`.
    """

    num_method: str = NUM_METHOD
    num_threshold: float = NUM_THRESHOLD
    cat_method: str = CAT_METHOD
    cat_threshold: float = CAT_THRESHOLD
    per_column: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.per_column) - set(FEATURES))
        if unknown:
            raise ValueError(f"per-column thresholds name unknown columns {unknown}; feature columns: {list(FEATURES)}")
        for method in (self.num_method, self.cat_method):
            _rule(method)

    def method(self, column: str) -> str:
        return self.num_method if column in NUMERIC_FEATURES else self.cat_method

    def threshold(self, column: str) -> float:
        default = self.num_threshold if column in NUMERIC_FEATURES else self.cat_threshold
        return float(self.per_column.get(column, default))


@dataclass
class ColumnDrift:
    column: str
    method: str
    kind: str
    score: float
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    columns: list[ColumnDrift]
    drifted_share: float  # Evidently's DriftedColumnsCount share over the feature columns
    drifted_count: int
    prediction: ColumnDrift | None
    html: str

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


def _finite(value) -> float:
    # Evidently hands back np.float64 (not JSON-safe) and NaN for an empty column.
    value = float(value)
    return value if math.isfinite(value) else float("nan")


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: Thresholds,
    *,
    drift_share: float = 0.5,
    prediction_method: str = PREDICTION_METHOD,
    prediction_threshold: float = PREDICTION_THRESHOLD,
) -> DriftResult:
    """Evidently data drift of the feature columns, plus drift of a `prediction` column when both frames hold one."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    with_prediction = PREDICTION_COLUMN in reference and PREDICTION_COLUMN in current
    columns = [*FEATURES, PREDICTION_COLUMN] if with_prediction else list(FEATURES)
    definition = DataDefinition(
        numerical_columns=[*NUMERIC_FEATURES, *([PREDICTION_COLUMN] if with_prediction else [])],
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
            drift_share=drift_share,  # only the HTML's "dataset drift" headline uses it
            num_method=thresholds.num_method,
            cat_method=thresholds.cat_method,
            # Every column spelled out, so Evidently's own precedence rules never come into play.
            per_column_threshold={c: thresholds.threshold(c) for c in FEATURES},
        )
    ]
    if with_prediction:
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
            by_column[config["column"]] = ColumnDrift(
                column=config["column"],
                method=method,
                kind=method_kind(method),
                score=score,
                threshold=threshold,
                drifted=is_drifted(method, score, threshold),
            )
    return DriftResult(
        columns=[by_column[c] for c in FEATURES],
        drifted_share=share,
        drifted_count=count,
        prediction=by_column.get(PREDICTION_COLUMN),
        html=snapshot.get_html_str(as_iframe=False),
    )


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
