"""Per-column drift thresholds calibrated on the reference window itself: a seasonal column gets a wide
band, a stable one the floor. No Dagster here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlops_assets.features_spec import FEATURES, NUMERIC_FEATURES, ROW_KEY
from mlops_assets.monitoring.stattests import DISTANCE, column_score, method_kind, sample_rows

# Normed Wasserstein is the distance between the two distributions in units of the reference's
# standard deviation; Jensen-Shannon distance runs from 0 (same shares) to 1.
NUM_METHOD, CAT_METHOD = "wasserstein", "jensenshannon"

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


def flight_days(frame: pd.DataFrame) -> np.ndarray:
    """Day of each row counted from the frame's first day, read from flight_id ('YYYY-MM-DD/...')."""
    if ROW_KEY not in frame:
        raise ValueError(f"calibration needs the reference's {ROW_KEY} column to place rows in time")
    dates = pd.to_datetime(frame[ROW_KEY].astype(str).str[:10], format="%Y-%m-%d", errors="coerce")
    if dates.isna().all():
        raise ValueError(f"no date in the reference's {ROW_KEY} values")
    dates = dates.fillna(dates.min())
    return ((dates - dates.min()).dt.days).to_numpy()


def calibrate(
    reference: pd.DataFrame, calibration: Calibration, current_rows: int | None = None
) -> dict[str, ColumnThreshold]:
    """Each feature column's threshold, from how far its blocks of the reference move from the whole.

    With `current_rows` (the size of the month to be judged), each block is sampled down to that many
    rows: a few thousand served rows wander further from the reference by chance than a month of
    batch rows, and the band must include that, or a small sample of an unchanged month drifts.
    """
    rng = np.random.default_rng(calibration.seed)
    reference = sample_rows(reference, calibration.rows, rng)
    days = flight_days(reference)
    span = int(days.max()) + 1
    length = max(1, min(calibration.block_days, span // 2))
    # Blocks from the first day on, and one that ends on the last: a month just before or after the
    # window sits at one of its ends, which is where the window's own movement is largest.
    starts = sorted({*range(0, span - length + 1, calibration.step_days), span - length})
    masks = [(days >= s) & (days < s + length) for s in starts]
    blocks = [np.flatnonzero(m) for m in masks if m.sum() >= MIN_BLOCK_ROWS]
    if current_rows is not None:
        size = max(current_rows, MIN_BLOCK_ROWS)
        blocks = [np.sort(rng.choice(b, size, replace=False)) if len(b) > size else b for b in blocks]
    thresholds = {}
    for column in FEATURES:
        method, floor = calibration.method(column), calibration.floor(column)
        values = reference[column]
        scores = [column_score(method, column, values, values.iloc[b]) for b in blocks]
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
