"""monitoring_sensor: a month's drift_report and live_performance follow its new data on their own.

It evaluates the automation conditions of the monitoring group (mlops_assets.monitoring.on_new_data):
new validated features for a month produce that month's drift report, new batch predictions its
live-performance report. drift_sensor and live_performance_sensor then read those reports, so new
data reaches retraining with nobody clicking anything.
"""

import dagster as dg

monitoring_sensor = dg.AutomationConditionSensorDefinition(
    "monitoring_sensor",
    target=dg.AssetSelection.groups("monitoring"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Materializes drift_report and live_performance for each month whose upstream data is new.",
)
