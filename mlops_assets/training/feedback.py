"""The rows a model trains on, and the audit they pass first. No Dagster here.

A training month the server answered contributes what production saw: each served row (features as the
server received them) labelled by the outcome that had arrived by `as_of`. Those rows replace the batch
rows of the same flights; the batch rows of flights nobody asked about stay. A served row whose label
has not arrived is left out, never labelled from the batch data, so feedback training uses only labels
the outcome stream had delivered.

The audit names what is wrong before any epoch runs: too few rows, too little of the served traffic
labelled, too small a served share when one is required, or a holdout month that leaked into training.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from mlops_assets.features_spec import FEATURES, ROW_KEY, TARGET
from mlops_assets.monitoring.performance import arrived_labels

TRAINING_COLUMNS = [ROW_KEY, *FEATURES, TARGET]


@dataclass(frozen=True)
class MonthRows:
    month: str
    batch_rows: int  # validated rows of flights the server never answered
    served_rows: int  # distinct flights the server answered
    labelled_rows: int  # of those, the ones whose outcome had arrived by as_of

    @property
    def rows(self) -> int:
        return self.batch_rows + self.labelled_rows


@dataclass(frozen=True)
class Floors:
    min_rows: int
    min_month_rows: int
    min_label_coverage: float
    min_served_share: float


def month_rows(
    month: str, batch: pd.DataFrame, served: pd.DataFrame | None, outcomes: pd.DataFrame | None, as_of: datetime
) -> tuple[pd.DataFrame, MonthRows]:
    """One month's training rows and where they came from; `served` is None when feedback is off."""
    if served is None or served.empty:
        return batch[TRAINING_COLUMNS], MonthRows(month, len(batch), 0, 0)
    served = served.dropna(subset=[ROW_KEY]).drop_duplicates(subset=ROW_KEY, keep="last")
    labels = pd.DataFrame(columns=[ROW_KEY, TARGET]) if outcomes is None else arrived_labels(outcomes, as_of)
    labelled = served[[ROW_KEY, *FEATURES]].merge(labels, on=ROW_KEY, how="inner")
    unserved = batch[~batch[ROW_KEY].isin(served[ROW_KEY])]
    frame = pd.concat([unserved[TRAINING_COLUMNS], labelled[TRAINING_COLUMNS]], ignore_index=True)
    return frame, MonthRows(month, len(unserved), len(served), len(labelled))


def label_coverage(sources: list[MonthRows]) -> float | None:
    """Labelled share of the served rows in training months, None when none was served."""
    served = sum(s.served_rows for s in sources)
    return sum(s.labelled_rows for s in sources) / served if served else None


def served_share(sources: list[MonthRows]) -> float:
    rows = sum(s.rows for s in sources)
    return sum(s.labelled_rows for s in sources) / rows if rows else 0.0


def floor_failures(sources: list[MonthRows], floors: Floors) -> list[str]:
    """Each configured floor the training rows fall below, in words; empty when they may train."""
    failures = []
    rows = sum(s.rows for s in sources)
    if rows < floors.min_rows:
        failures.append(f"{rows} training rows, below min_rows {floors.min_rows}")
    thin = [f"{s.month} ({s.rows})" for s in sources if s.rows < floors.min_month_rows]
    if thin:
        failures.append(f"months below min_month_rows {floors.min_month_rows}: {', '.join(thin)}")
    coverage = label_coverage(sources)
    if coverage is not None and coverage < floors.min_label_coverage:
        failures.append(
            f"label coverage {coverage:.3f} of the served rows, below min_label_coverage {floors.min_label_coverage}"
        )
    share = served_share(sources)
    if share < floors.min_served_share:
        failures.append(f"served share {share:.3f} of the rows, below min_served_share {floors.min_served_share}")
    return failures


def holdout_failures(frame: pd.DataFrame, train_months: list[str], validation_month: str, holdout: str) -> list[str]:
    """How the held-out month (and the validation month) reach training, in words; empty when untouched.

    A row's month is the date its flight_id starts with ('YYYY-MM-DD/...'), so a served row of another
    month logged in a training month is caught as well as a misconfigured window."""
    failures = []
    if holdout in train_months or holdout == validation_month:
        failures.append(f"holdout month {holdout} is a training or validation month")
    if validation_month in train_months:
        failures.append(f"validation month {validation_month} is also a training month")
    row_months = frame[ROW_KEY].astype(str).str[:7]
    for month in dict.fromkeys([holdout, validation_month]):
        leaked = int((row_months == month).sum())
        if leaked:
            failures.append(f"{leaked} training rows are flights of {month}")
    return failures
