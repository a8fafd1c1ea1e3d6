"""The one code location: assets and checks from mlops_assets, automation from sensors, resources."""

import dagster as dg

import resources
import sensors
from mlops_assets import (
    compression,
    datasets,
    deployment,
    evaluation,
    features,
    inference,
    monitoring,
    registry,
    training,
)

PIPELINE_MODULES = [datasets, features, training, compression, evaluation, registry, deployment, inference, monitoring]


@dg.definitions
def defs() -> dg.Definitions:
    pipeline = dg.Definitions(
        assets=dg.load_assets_from_modules(PIPELINE_MODULES),
        asset_checks=dg.load_asset_checks_from_modules(PIPELINE_MODULES),
    )
    return dg.Definitions.merge(pipeline, sensors.defs(), resources.defs())
