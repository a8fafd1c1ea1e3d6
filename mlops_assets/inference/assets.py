"""batch_predictions: every month scored by the current champion, written as Parquet."""

import dagster as dg
import pandas as pd

from mlops_assets import onnx_metrics
from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import ROW_KEY
from mlops_assets.metadata import readable
from mlops_assets.partitions import monthly_partitions
from resources import ArtifactStore, MlflowRegistry
from resources.mlflow_registry import CHAMPION


def predictions_key(partition: str) -> str:
    return f"predictions/{partition}.parquet"


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="inference",
    kinds={"onnx", "parquet"},
    deps=["validated_features", "champion_model"],
    # A backfill of many months is one run that loads the champion once.
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def batch_predictions(
    context: dg.AssetExecutionContext, store: ArtifactStore, registry: MlflowRegistry
) -> dg.MaterializeResult:
    """Probability of delay for every flight of the month: row key, score and the model version that scored it."""
    champion = registry.version_by_alias(CHAMPION)
    if champion is None:
        raise dg.Failure("no registry version holds alias 'champion' yet: materialize champion_model first")
    version = str(champion.version)
    champion_session = onnx_metrics.session(registry.onnx_bytes(version))
    rows, paths = 0, []
    for partition in context.partition_keys:
        frame = load_features(store, [partition])
        scored = pd.DataFrame(
            {ROW_KEY: frame[ROW_KEY], "score": onnx_metrics.predict(champion_session, frame), "model_version": version}
        )
        paths.append(store.write_frame(predictions_key(partition), scored))
        rows += len(scored)
    return dg.MaterializeResult(
        metadata=readable(
            {
                "model_version": version,
                "rows": rows,
                "months": ", ".join(context.partition_keys),
                "paths": dg.MetadataValue.md("\n".join(f"- `{p}`" for p in paths)),
            }
        )
    )
