"""`make demo`: the whole pipeline on the embedded defaults, as a new user would run it.

Validates every month, trains on the default window through the promotion gate, backfills batch
predictions for all months with the documented CLI command, then says what happened and where to look.
Every run goes into $DAGSTER_HOME under its job's name (features_job, training_job,
batch_inference_job, monitoring_job) with the tag mlops/trigger=demo, so the UI shows what each was.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import dagster as dg

from deploy.local import runs
from deploy.local.demo_monitoring import load_test_lines, run_monitoring_loop
from deploy.local.demo_traffic import REPLAY_MONTH, REPLAY_ROWS, replay_month
from mlops_assets.partitions import monthly_partitions
from resources import local_resources
from resources.mlflow_registry import CHAMPION
from resources.settings import mlops_home

DEMO_TAGS = {"mlops/trigger": "demo"}
# One run of the named scoring job over the whole year (batch_predictions has a single-run backfill policy).
BACKFILL_COMMAND = [
    "dagster", "job", "execute", "-m", "mlops_assets.definitions", "-j", "batch_inference_job",
    "--tags", json.dumps({
        "dagster/asset_partition_range_start": "2013-01",
        "dagster/asset_partition_range_end": "2013-12",
        **DEMO_TAGS,
    }),
]  # fmt: skip


@dataclass
class DemoRun:
    """What the demo did, for the summary and for `make bench`."""

    timings: dict[str, float] = field(default_factory=dict)
    training: dg.ExecuteInProcessResult | None = None


def execute(instance: dg.DagsterInstance, job: str, **kwargs) -> dg.ExecuteInProcessResult:
    """A named job on the embedded defaults that reports failure instead of raising, so the demo can explain it."""
    return runs.execute_job(
        job, resources=local_resources(), instance=instance, raise_on_error=False, tags=DEMO_TAGS, **kwargs
    )


def _stage(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.perf_counter()


def run_pipeline(instance: dg.DagsterInstance) -> DemoRun:
    """Features for every month, one training run through the gate, then the batch-scoring backfill."""
    run = DemoRun()
    start = _stage("raw_flights + validated_features for every month of 2013")
    for month in monthly_partitions.get_partition_keys():
        result = execute(instance, "features_job", partition_key=month)
        print(f"  {month}: {'valid' if result.success else 'FAILED validation'}", flush=True)
        if not result.success:
            raise SystemExit(f"validated_features failed for {month}; see the run in the Dagster UI")
    run.timings["features_s"] = time.perf_counter() - start

    start = _stage(
        "trained_model -> onnx_model -> pruned/student/int8 candidates -> model_scorecard -> "
        "evaluation_report -> registered_model -> gate -> champion"
    )
    run.training = execute(instance, "training_job")
    run.timings["training_s"] = time.perf_counter() - start
    if not run.training.success:  # a refusal is not a failure: the run fails only when something broke
        raise SystemExit("the training run failed; see training_job in the Dagster UI")

    start = _stage("backfill batch_predictions for 2013-01..2013-12: " + " ".join(BACKFILL_COMMAND[:7]))
    dagster = os.path.join(os.path.dirname(sys.executable), BACKFILL_COMMAND[0])
    backfill = subprocess.run([dagster, *BACKFILL_COMMAND[1:]], capture_output=True, text=True)
    run.timings["backfill_s"] = time.perf_counter() - start
    if backfill.returncode != 0:
        raise SystemExit(f"backfill failed:\n{backfill.stderr[-4000:]}")
    return run


def _gate(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation | None:
    return next((e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"), None)


def summary(run: DemoRun) -> list[str]:
    resources = local_resources()
    registry = resources["registry"]
    registered = run.training.output_for_node("registered_model")
    gate = _gate(run.training)
    champion = registry.version_by_alias(CHAMPION)
    challenger, tags = registered.evaluation.challenger, registered.tags
    return [
        f"scorecard ({tags['scorecard_profile']}): {tags['candidate']} won - {tags['scorecard_ranking']}",
        f"challenger: {registry.model_name} v{registered.version}, ROC AUC {challenger['auc']:.4f} on "
        f"{tags['evaluation_month']} (MLflow run {tags['mlflow_run_id']})",
        f"promotion: {gate.metadata['decision'].value} - {gate.metadata['reason'].value}",
        *(line.strip() for line in load_test_lines(run.training)),
        f"champion now: v{champion.version if champion else 'none'}",
        f"batch predictions for 12 months: {resources['store'].root}/predictions/",
        "stage times (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in run.timings.items()),
        "Dagster UI: `make ui`, then http://127.0.0.1:3000 (every run above is in $DAGSTER_HOME)",
        "MLflow UI:  `make mlflow-ui`, then http://127.0.0.1:5000",
    ]


def main() -> int:
    instance = dg.DagsterInstance.get()
    run = run_pipeline(instance)
    lines = summary(run)  # before retraining can move the champion
    resources = local_resources()
    start = _stage(
        f"mlops-serve on loopback, following the registry: {REPLAY_ROWS} flights of {REPLAY_MONTH} as traffic"
    )
    replayed = replay_month(mlops_home(), resources["store"], resources["registry"].model_name)
    lines.append(
        f"served traffic: {replayed.rows} flights of {replayed.month} in {replayed.requests} tritonclient requests "
        f"with row keys, {replayed.failed} failed, {replayed.seconds:.1f} s; "
        f"shipped to {resources['served'].location()}"
    )
    start = _stage(
        "drift_report 2013-04..2013-12, live_performance -> drift_sensor -> retraining run -> promotion gate"
    )
    lines += run_monitoring_loop(instance, resources, live_month=REPLAY_MONTH)
    lines.append(f"monitoring loop: {time.perf_counter() - start:.1f} s")
    print("\n==> Summary")
    for line in lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
