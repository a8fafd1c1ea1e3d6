"""The named jobs: features, training (retrain-through-promotion), scoring, monitoring.

The demo, the sensors, the schedule and the UI launch these, so every run says what it is."""

import dagster as dg

from mlops_assets.partitions import monthly_partitions
from sensors.guard import RETRAINING_TAG, TRAINING_JOB

# Training through the promotion gate (a blocking check on registered_model). Everything from
# batch_predictions on (scoring, live_performance) and the monitoring group (drift_report reads the
# champion) is monthly work that follows a new champion; it is not part of making one.
TRAINING_SELECTION = (
    dg.AssetSelection.assets("training_data").downstream()
    - dg.AssetSelection.assets("batch_predictions").downstream()
    - dg.AssetSelection.groups("monitoring")
)

features_job = dg.define_asset_job(
    "features_job",
    selection=dg.AssetSelection.assets("raw_flights", "validated_features"),
    partitions_def=monthly_partitions,
    description="One month of raw flights, validated by Great Expectations into features.",
)

# The tag lets the run queue allow one retraining at a time (tag_concurrency_limits in dagster.yaml).
training_job = dg.define_asset_job(
    TRAINING_JOB,
    selection=TRAINING_SELECTION,
    tags={RETRAINING_TAG: "true"},
    description="Train, compress, score, evaluate and register a challenger; the promotion gate decides.",
)

monitoring_job = dg.define_asset_job(
    "monitoring_job",
    selection=dg.AssetSelection.groups("monitoring"),
    partitions_def=monthly_partitions,
    description="One month's drift report and live performance against the champion.",
)

batch_inference_job = dg.define_asset_job(
    "batch_inference_job",
    selection=dg.AssetSelection.assets("batch_predictions"),
    partitions_def=monthly_partitions,
    description="Score one month of validated features with the champion.",
)
