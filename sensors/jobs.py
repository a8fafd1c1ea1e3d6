"""Jobs the schedule and sensors launch: retrain-through-promotion, and batch scoring."""

import dagster as dg

from mlops_assets.partitions import monthly_partitions

# Training through the promotion gate (a blocking check on registered_model). Everything from
# batch_predictions on (scoring, live_performance) and the monitoring group (drift_report reads the
# champion) is monthly work that follows a new champion; it is not part of making one.
TRAINING_SELECTION = (
    dg.AssetSelection.assets("trained_model").downstream()
    - dg.AssetSelection.assets("batch_predictions").downstream()
    - dg.AssetSelection.groups("monitoring")
)

training_job = dg.define_asset_job("training_job", selection=TRAINING_SELECTION)

batch_inference_job = dg.define_asset_job(
    "batch_inference_job", selection=dg.AssetSelection.assets("batch_predictions"), partitions_def=monthly_partitions
)
