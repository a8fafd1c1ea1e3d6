"""Delayed labels and the live performance of each model version: the arithmetic behind outcomes and
live_performance. No Dagster here.

A prediction is judged only on a label that had arrived by the evaluation time (`as_of`), so a
report computed today never uses tomorrow's labels, and re-running it later adds the labels that
arrived meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from mlops_assets import onnx_metrics
from mlops_assets.features_spec import ROW_KEY, TARGET

OUTCOME_COLUMNS = [ROW_KEY, TARGET, "arrived_at"]


def label_arrivals(features: pd.DataFrame, delay_hours: float) -> pd.DataFrame:
    """Each flight's outcome and the time it becomes known: `delay_hours` after its scheduled departure
    (the date in its flight_id, 'YYYY-MM-DD/...', plus its `hour`)."""
    day = pd.to_datetime(features[ROW_KEY].astype(str).str[:10], format="%Y-%m-%d", errors="coerce", utc=True)
    departure = day + pd.to_timedelta(pd.to_numeric(features["hour"], errors="coerce").fillna(0), unit="h")
    frame = pd.DataFrame(
        {
            ROW_KEY: features[ROW_KEY].astype(str),
            TARGET: pd.to_numeric(features[TARGET], errors="coerce"),
            "arrived_at": departure + pd.to_timedelta(delay_hours, unit="h"),
        }
    )
    return frame.dropna(subset=[TARGET, "arrived_at"]).reset_index(drop=True)


def arrived_labels(outcomes: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """Row key and label of each outcome that had arrived by `as_of`, one per key: a re-delivered outcome
    must not count a prediction twice."""
    arrived = outcomes[outcomes["arrived_at"] <= pd.Timestamp(as_of)]
    return arrived.drop_duplicates(subset=ROW_KEY, keep="last")[[ROW_KEY, TARGET]]


def join_outcomes(predictions: pd.DataFrame, outcomes: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """`predictions` (row key, model_version, score) with the label of each row that had arrived by `as_of`
    (NaN for the rest: not yet labelled)."""
    joined = predictions[[ROW_KEY, "model_version", "score"]].merge(
        arrived_labels(outcomes, as_of), on=ROW_KEY, how="left"
    )
    return joined.dropna(subset=["score"])


def calibration_table(labels: np.ndarray, scores: np.ndarray, bins: int) -> tuple[float, list[dict]]:
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


@dataclass(frozen=True)
class VersionPerformance:
    source: str  # "served" or "batch"
    version: str
    predictions: int
    labelled: int
    auc: float | None  # None: too few labelled rows, or one class only
    brier: float | None
    calibration_error: float | None
    mean_score: float
    observed_rate: float | None
    bins: list[dict] = field(default_factory=list)

    @property
    def unlabelled_share(self) -> float:
        return 1.0 - self.labelled / self.predictions if self.predictions else 1.0


def by_version(joined: pd.DataFrame, source: str, bins: int, min_labelled: int) -> list[VersionPerformance]:
    """Live figures for each model version in `joined`, most labelled rows first."""
    figures = []
    for version, rows in joined.groupby("model_version", sort=True):
        labelled = rows.dropna(subset=[TARGET])
        labels, scores = labelled[TARGET].to_numpy(int), labelled["score"].to_numpy(float)
        judged = len(labelled) >= max(min_labelled, 1) and len(np.unique(labels)) == 2
        metrics = onnx_metrics.predictive(labels, scores) if judged else {}
        error, table = calibration_table(labels, scores, bins) if judged else (None, [])
        figures.append(
            VersionPerformance(
                source=source,
                version=str(version),
                predictions=len(rows),
                labelled=len(labelled),
                auc=metrics.get("auc"),
                brier=metrics.get("brier"),
                calibration_error=error,
                mean_score=float(rows["score"].mean()),
                observed_rate=float(labels.mean()) if len(labels) else None,
                bins=table,
            )
        )
    return sorted(figures, key=lambda f: (-f.labelled, f.version))
