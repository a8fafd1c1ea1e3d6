"""Automation: schedules and sensors that steer the pipeline."""

import dagster as dg

from sensors.drift import drift_sensor, live_performance_sensor
from sensors.jobs import batch_inference_job, features_job, monitoring_job, training_job
from sensors.monitoring import monitoring_sensor
from sensors.schedules import monthly_retraining
from sensors.served import served_traffic_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(
        jobs=[features_job, training_job, batch_inference_job, monitoring_job],
        sensors=[drift_sensor, live_performance_sensor, monitoring_sensor, served_traffic_sensor],
        schedules=[monthly_retraining],
    )
