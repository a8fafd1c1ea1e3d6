"""The one code location: assets and checks from every stage package, automation from sensors, resources.

Stages are found, not listed: every subpackage of mlops_assets (ingestion, features, training, ...)
is walked, so a new stage folder joins the code location by existing.
"""

import dagster as dg

import mlops_assets
import resources
import sensors


@dg.definitions
def defs() -> dg.Definitions:
    pipeline = dg.Definitions(
        assets=dg.load_assets_from_package_module(mlops_assets),
        asset_checks=dg.load_asset_checks_from_package_module(mlops_assets),
    )
    return dg.Definitions.merge(pipeline, sensors.defs(), resources.defs())
