"""When the monitoring assets run on their own (monitoring_sensor evaluates this condition)."""

import dagster as dg


def on_new_data(*triggers: str) -> dg.AutomationCondition:
    """A month's report reruns once `triggers` have a new materialization for that month.

    A quarantined month (a failed Great Expectations check) is not materialized, so it is never
    reported on. A new champion does not rerun anything: it would judge every month again at once
    and hand the sensors a burst of verdicts about the model that just replaced the one they judged.
    """
    return (
        dg.AutomationCondition.any_deps_updated().allow(dg.AssetSelection.assets(*triggers)).since_last_handled()
        # A quarantined month's latest validated_features run failed. (Checks are per asset, not per
        # month, so "checks passed" would let one bad month block all the others.) Only the month's
        # data counts: a refused challenger or a failed deployment says nothing about the data.
        & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.execution_failed()).ignore(
            dg.AssetSelection.assets("champion_model")
        )
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"new {' or '.join(triggers)}")
