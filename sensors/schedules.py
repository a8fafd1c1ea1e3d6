"""monthly_retraining: a retraining run on the 1st of each month, whatever the monitors say.

Stopped by default. The drift and live-performance sensors already retrain when the evidence asks
for it; this is the backstop for a team that wants a fresh model every month regardless, and it
only makes sense once real monthly data flows in: the shipped data ends in 2013-12, so on today's
calendar every tick would skip.
"""

import time
from datetime import UTC, datetime

import dagster as dg

from mlops_assets import months
from sensors.guard import held_by_runs
from sensors.jobs import training_job
from sensors.retraining import DEFAULT_COOLDOWN_SECONDS, retraining_run_config

CRON = "0 4 1 * *"  # 04:00 UTC on the 1st: last month is complete and its batch jobs have run


def build_monthly_retraining_schedule(
    window_months: int = months.DEFAULT_WINDOW_MONTHS,
    cooldown_seconds: float = DEFAULT_COOLDOWN_SECONDS,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="monthly_retraining",
        cron_schedule=CRON,
        execution_timezone="UTC",
        job=training_job,
        default_status=default_status,
        description="On the 1st of each month, retrain on the trailing window ending with last month.",
    )
    def monthly_retraining(context: dg.ScheduleEvaluationContext):
        moment = context.scheduled_execution_time or datetime.now(UTC)
        last_month = months.previous(moment)
        window = months.retraining_window(last_month, window_months)
        if window is None:
            return dg.SkipReason(
                f"no retraining window ends with {last_month}: the data covers "
                f"{months.FIRST_MONTH}..{months.LAST_MONTH} and a run needs three months up to the last one"
            )
        held = held_by_runs(context.instance, cooldown_seconds, time.time())
        if held is not None:
            return dg.SkipReason(f"retraining for {last_month} not started: {held}")
        return dg.RunRequest(
            run_key=f"monthly_retraining-{last_month}",
            run_config=retraining_run_config(window),
            tags={
                "mlops/trigger": "monthly_retraining",
                "mlops/partitions": last_month,
                "mlops/window": window.describe(),
            },
        )

    return monthly_retraining


monthly_retraining = build_monthly_retraining_schedule()
