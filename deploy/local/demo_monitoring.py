"""The monitoring half of `make demo`: drift reports, the drift sensor on the real instance, the retraining it asks for.

Called by deploy/local/demo.py after it has trained on 2013-01..03 and backfilled predictions. Each
step is what the daemon and a person in the UI would do, done in process so the demo needs no daemon:
materialize drift_report month by month (monitoring_job), evaluate drift_sensor on this instance,
execute the run it requests as `training_job`, then measure the newest month again against whichever
model is champion. The sensors' guard (sensors/guard.py) reads the same instance, so the daemon that
`make ui` starts afterwards does not repeat any of it.
"""

from __future__ import annotations

import dagster as dg

from deploy.local.runs import QUIET
from mlops_assets.load_test.report import demo_figures
from mlops_assets.partitions import monthly_partitions
from resources.mlflow_registry import CHAMPION
from sensors.drift import RetrainingCursor, drift_sensor
from sensors.jobs import monitoring_job, training_job

DEMO_MONTHS = monthly_partitions.get_partition_keys()[3:]  # 2013-04..2013-12: everything after the first window
DRIFT_REPORT = dg.AssetKey("drift_report")
DEMO_TAGS = {"mlops/trigger": "demo"}


def _definitions(resources: dict) -> dg.Definitions:
    from mlops_assets.definitions import defs

    # The project's assets and jobs, bound to the caller's resources instead of $MLOPS_HOME's defaults.
    definitions = defs()
    return dg.Definitions(
        assets=definitions.assets,
        asset_checks=definitions.asset_checks,
        jobs=[training_job, monitoring_job],
        resources=resources,
    )


def _drift_report(definitions: dg.Definitions, instance: dg.DagsterInstance, month: str) -> dict:
    result = definitions.resolve_job_def("monitoring_job").execute_in_process(
        asset_selection=[DRIFT_REPORT], partition_key=month, instance=instance, run_config=QUIET, tags=DEMO_TAGS
    )
    metadata = result.asset_materializations_for_node("drift_report")[0].metadata
    return {key: value.value for key, value in metadata.items()}


def _verdict(month: str, report: dict) -> str:
    source = "served traffic" if report["current_source"] == "served_traffic" else "batch features"
    if not report["drifted"]:
        return (
            f"{month} ({source}): no drift (share {report['drifted_share']:.2f}, "
            f"prediction {report['prediction_score']:.3f})"
        )
    return f"{month} ({source}): DRIFT - {report['drift_reasons']}"


def _live_performance(definitions: dg.Definitions, instance: dg.DagsterInstance, month: str) -> list[str]:
    """The month's outcomes and live performance, as the summary lines a person reads."""
    result = definitions.resolve_job_def("monitoring_job").execute_in_process(
        asset_selection=[dg.AssetKey("outcomes"), dg.AssetKey("live_performance")],
        partition_key=month,
        instance=instance,
        run_config=QUIET,
        tags=DEMO_TAGS,
    )
    live = result.asset_materializations_for_node("live_performance")[0].metadata
    lines = [
        f"live performance {month}, judged on {live['judged_source'].value} predictions "
        f"(labels {live['labelled_rows'].value} of {live['predictions'].value}, as of {live['as_of'].value[:19]}): "
        f"{'DEGRADED' if live['degraded'].value else 'ok'} - {live['reason'].value}"
    ]
    for figures in live["version_figures"].value:
        auc = "-" if figures["auc"] is None else f"{figures['auc']:.4f}"
        lines.append(
            f"  {figures['source']} v{figures['version']}: AUC {auc}, "
            f"{figures['labelled']} of {figures['predictions']} labelled"
        )
    return lines


def load_test_lines(result: dg.ExecuteInProcessResult) -> list[str]:
    """The challenger's load test as the summary prints it: the gate's verdict, throughput, p99, cost."""
    if not result.asset_materializations_for_node("load_test"):
        return ["  load test: not run (see the run in the Dagster UI)"]
    figures = demo_figures(result.output_for_node("load_test"))
    return [f"  {name}: {value}" for name, value in figures.items()]


def _training_data(result: dg.ExecuteInProcessResult) -> list[str]:
    """What the retraining learned from, and the audit its blocking checks passed or refused."""
    materializations = result.asset_materializations_for_node("training_data")
    if not materializations:
        return ["  training_data: not materialized (see the run in the Dagster UI)"]
    data = materializations[0].metadata
    coverage = data["label_coverage"].value
    checks = ", ".join(
        f"{e.check_name} {'passed' if e.passed else 'FAILED: ' + (e.description or '')}"
        for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey("training_data")
    )
    return [
        f"  training_data: {data['rows'].value} rows of {data['train_months'].value}, "
        f"{data['served_share'].value:.1%} from served traffic, label coverage "
        f"{coverage if isinstance(coverage, str) else f'{coverage:.1%}'}, held out {data['holdout_month'].value}",
        f"  audit: {checks}",
    ]


def _latest_storage_id(instance: dg.DagsterInstance) -> int:
    records = instance.fetch_materializations(DRIFT_REPORT, limit=1).records
    return records[0].storage_id if records else 0


def run_monitoring_loop(
    instance: dg.DagsterInstance,
    resources: dict,
    months: list[str] | None = None,
    op_config: dict[str, dict] | None = None,
    live_month: str | None = None,
) -> list[str]:
    """Drift reports for `months`, one drift_sensor tick, the retraining it requests; returns summary lines.

    With `live_month` (the month whose traffic the demo served), its outcomes and live performance
    per version come before the sensor decides.

    `op_config` ({"trained_model": {"epochs": 2}}) is laid over the request's run config, for tests
    that need a quick run; the demo passes none and retrains exactly as the sensor asked.
    """
    months = months or list(DEMO_MONTHS)
    definitions = _definitions(resources)
    registry, store = resources["registry"], resources["store"]
    champion = registry.version_by_alias(CHAMPION)
    if champion is None:
        raise dg.DagsterInvariantViolationError("run_monitoring_loop needs a champion: run the training demo first")
    lines = [
        f"drift reports {months[0]}..{months[-1]} against champion v{champion.version} "
        f"(trained on {champion.tags.get('train_months')}):"
    ]

    # The sensor starts just before this demo's reports, so earlier demos on this instance don't count.
    cursor = RetrainingCursor(storage_id=_latest_storage_id(instance)).dump()
    reports = {}
    for month in months:
        reports[month] = _drift_report(definitions, instance, month)
        lines.append("  " + _verdict(month, reports[month]))
    drifted = [m for m in months if reports[m]["drifted"]]
    lines.append(f"  drifted months: {', '.join(drifted) or 'none'}; HTML reports in {store.uri('drift/')}")
    if live_month is not None:
        lines += _live_performance(definitions, instance, live_month)

    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions) as context:
        tick = drift_sensor.evaluate_tick(context)
    cursor = tick.cursor
    if not tick.run_requests:
        lines.append(f"drift_sensor: skipped - {tick.skip_message}")
        return lines
    request = tick.run_requests[0]
    lines.append(f"drift_sensor: requested training_job ({request.tags['mlops/window']})")
    lines.append(f"  for {request.tags['mlops/partitions']}")

    ops = {name: {"config": dict(entry["config"])} for name, entry in request.run_config["ops"].items()}
    for name, config in (op_config or {}).items():
        ops.setdefault(name, {"config": {}})["config"].update(config)
    result = definitions.resolve_job_def("training_job").execute_in_process(
        run_config={**QUIET, "ops": ops}, instance=instance, tags=request.tags, raise_on_error=False
    )
    outcome = "succeeded" if result.success else "FAILED (something broke: see the run in the Dagster UI)"
    lines.append(f"retraining run {result.run_id}: {outcome}")
    gate = next((e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"), None)
    if gate is None:
        lines.append("  no promotion decision: the run failed before the gate (see the run in the Dagster UI)")
        return lines
    lines += _training_data(result)
    lines += load_test_lines(result)
    registered = result.output_for_node("registered_model")
    now = registry.version_by_alias(CHAMPION)
    decision, reason = gate.metadata["decision"].value, gate.metadata["reason"].value
    lines.append(f"  challenger v{registered.version} {decision}: {reason}")
    lines.append(f"  champion now v{now.version} (was v{champion.version})")

    # Close the loop: the newest month measured again against whichever model is champion now.
    newest = drifted[-1]
    after = _drift_report(definitions, instance, newest)
    lines.append(f"after retraining, against v{now.version}: " + _verdict(newest, after))
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions) as context:
        tick = drift_sensor.evaluate_tick(context)
    if tick.run_requests:
        lines.append(f"drift_sensor next tick: requested another run ({tick.run_requests[0].tags['mlops/window']})")
    else:
        lines.append(f"drift_sensor next tick: skipped - {tick.skip_message}")
    return lines
