"""The one code location: assets and checks from mlops_assets, automation from sensors, resources."""

import dagster as dg

import resources
import sensors
from mlops_assets import datasets, evaluation, features, inference, registry, training


@dg.definitions
def defs() -> dg.Definitions:
    pipeline = dg.Definitions(
        assets=dg.load_assets_from_modules([datasets, features, training, evaluation, registry, inference]),
        asset_checks=dg.load_asset_checks_from_modules([registry]),
    )
    return dg.Definitions.merge(pipeline, sensors.defs(), resources.defs())
