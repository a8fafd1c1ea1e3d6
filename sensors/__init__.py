"""Automation: schedules and sensors that steer the pipeline."""

import dagster as dg

from sensors.jobs import batch_inference_job, training_job


def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[training_job, batch_inference_job])
