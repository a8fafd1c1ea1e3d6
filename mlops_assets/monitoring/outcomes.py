"""outcomes: the true label of each of a month's flights and when it became known (delayed labels).

The embedded default derives them from the shipped flight data: a flight's outcome is known
`label_delay_hours` after its scheduled departure. A deployment whose labels arrive from elsewhere
(a warehouse table, a feedback queue) replaces this asset's body and keeps its output: Parquet with
flight_id, is_late and arrived_at under outcomes/<month>.parquet.
"""

import dagster as dg

from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import ROW_KEY, TARGET
from mlops_assets.metadata import readable
from mlops_assets.monitoring.automation import on_new_data
from mlops_assets.monitoring.performance import label_arrivals
from mlops_assets.partitions import monthly_partitions
from resources import ArtifactStore


def outcomes_key(partition: str) -> str:
    return f"outcomes/{partition}.parquet"


class OutcomesConfig(dg.Config):
    label_delay_hours: float = 24.0
    """Hours after a flight's scheduled departure at which its outcome is known; live_performance uses a
    label only once it has arrived, so this is how long a prediction waits to be judged."""


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="monitoring",
    kinds={"parquet"},
    deps=["validated_features"],
    automation_condition=on_new_data("validated_features"),
)
def outcomes(context: dg.AssetExecutionContext, config: OutcomesConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """The month's true outcomes with the time each one arrived: what live_performance joins predictions with."""
    if config.label_delay_hours < 0:
        raise dg.Failure(f"label_delay_hours must be >= 0, got {config.label_delay_hours}")
    features = load_features(store, [context.partition_key])[[ROW_KEY, "hour", TARGET]]
    frame = label_arrivals(features, config.label_delay_hours)
    path = store.write_frame(outcomes_key(context.partition_key), frame)
    return dg.MaterializeResult(
        metadata=readable(
            {
                "rows": len(frame),
                "late_rate": float(frame[TARGET].mean()) if len(frame) else 0.0,
                "first_arrival": str(frame["arrived_at"].min()) if len(frame) else "none",
                "last_arrival": str(frame["arrived_at"].max()) if len(frame) else "none",
                "label_delay_hours": config.label_delay_hours,
                "path": dg.MetadataValue.path(path),
            }
        )
    )
