"""In-process runs of the real Definitions, recorded in a Dagster instance: used by the demo, the
benchmarks and the tests, so all three exercise exactly what the code location serves."""

import dagster as dg

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _run_config(ops: dict[str, dict] | None) -> dict:
    return {**QUIET, "ops": {name: {"config": cfg} for name, cfg in (ops or {}).items()}}


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
        run_config=_run_config(ops),
        **kwargs,
    )


def execute_job(
    name: str,
    *,
    resources: dict,
    instance: dg.DagsterInstance,
    ops: dict[str, dict] | None = None,
    **kwargs,
) -> dg.ExecuteInProcessResult:
    """One of the code location's named jobs (features_job, training_job, ...), run in process, so
    the run shows in the UI under the job's name."""
    from mlops_assets.definitions import defs

    definitions = defs()
    job = dg.Definitions(
        assets=definitions.assets,
        asset_checks=definitions.asset_checks,
        jobs=definitions.jobs,
        resources=resources,
    ).resolve_job_def(name)
    return job.execute_in_process(run_config=_run_config(ops), instance=instance, **kwargs)
