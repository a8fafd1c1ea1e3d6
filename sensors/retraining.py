"""Which months a retraining run learns from, shared by the drift sensors and the monthly schedule.

The rule, for a run triggered by month N (the newest drifted or degraded month, or last month for
the schedule):

- train on the `months` months ending with N (default 3, the size of the first window), so the
  newest data, the data that drifted, is learnt from;
- pick the best epoch on the month just before that window;
- evaluate, and let the promotion gate compare challenger and champion, on the month before that.

Validation and evaluation lie before the window because N is the newest month with outcomes: there
is nothing later to hold out. Both models are judged on the same month; the challenger has never
seen it. When there is too little history (N early in the data) the window shrinks; a run needs at
least one training month and two earlier ones.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from mlops_assets.partitions import MONTH_FORMAT, monthly_partitions

DEFAULT_WINDOW_MONTHS = 3
DEFAULT_COOLDOWN_SECONDS = 24 * 3600  # between two retraining runs, whoever asks for them


@dataclass(frozen=True)
class RetrainingWindow:
    train_months: list[str]
    validation_month: str
    evaluation_month: str

    def run_config(self) -> dict:
        """training_job run config: only the months change; every other setting keeps its default."""
        return {
            "ops": {
                "trained_model": {
                    "config": {"train_months": list(self.train_months), "validation_month": self.validation_month}
                },
                "evaluation_report": {"config": {"evaluation_month": self.evaluation_month}},
                "model_scorecard": {"config": {"month": self.evaluation_month}},
            }
        }

    def describe(self) -> str:
        return (
            f"train {self.train_months[0]}..{self.train_months[-1]}, validate {self.validation_month}, "
            f"evaluate {self.evaluation_month}"
        )


def retraining_window(newest: str, months: int = DEFAULT_WINDOW_MONTHS) -> RetrainingWindow | None:
    """The window ending with `newest`, or None when the data holds fewer than three months up to it."""
    keys = monthly_partitions.get_partition_keys()
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


def previous_month(moment: datetime) -> str:
    """'YYYY-MM' of the calendar month before `moment`."""
    return (moment.replace(day=1) - timedelta(days=1)).strftime(MONTH_FORMAT)
