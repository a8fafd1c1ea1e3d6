"""In-process runs of the real Definitions, recorded in a Dagster instance: used by the demo, the
benchmarks and the tests, so all three exercise exactly what the code location serves."""

import dagster as dg

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def materialize(
    selection,
    *,
    resources: dict,
    instance: dg.DagsterInstance | None = None,
    ops: dict[str, dict] | None = None,
    **kwargs,
) -> dg.ExecuteInProcessResult:
    """dg.materialize over every asset and check of the code location, with per-asset config."""
    from mlops_assets.definitions import defs  # definitions imports the asset modules; keep this one light

    definitions = defs()
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        selection=selection,
        resources=resources,
        instance=instance,
        run_config={**QUIET, "ops": {name: {"config": cfg} for name, cfg in (ops or {}).items()}},
        **kwargs,
    )
