"""`make demo`: the whole pipeline on the embedded defaults, as a new user would run it.

Validates every month, trains on the default window through the promotion gate, backfills batch
predictions for all months with the documented CLI command, then says what happened and where to look.
"""

import os
import subprocess
import sys
import time

import dagster as dg

from mlops_assets.definitions import defs
from mlops_assets.partitions import monthly_partitions
from resources import local_resources
from resources.mlflow_registry import CHAMPION

BACKFILL_COMMAND = [
    "dagster", "asset", "materialize", "-m", "mlops_assets.definitions",
    "--select", "batch_predictions", "--partition-range", "2013-01...2013-12",
]  # fmt: skip


def _materialize(instance: dg.DagsterInstance, selection: list[str], **kwargs) -> dg.ExecuteInProcessResult:
    definitions = defs()
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        selection=selection,
        instance=instance,
        resources=local_resources(),
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        **kwargs,
    )


def _step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.perf_counter()


def main() -> int:
    instance = dg.DagsterInstance.get()  # $DAGSTER_HOME, so every run shows in the UI
    timings: dict[str, float] = {}

    start = _step("raw_flights + validated_features for every month of 2013")
    for month in monthly_partitions.get_partition_keys():
        result = _materialize(instance, ["raw_flights", "validated_features"], partition_key=month)
        print(f"  {month}: {'valid' if result.success else 'FAILED validation'}")
        if not result.success:
            return 1
    timings["features_s"] = time.perf_counter() - start

    start = _step("trained_model -> onnx_model -> evaluation_report -> registered_model -> promotion gate -> champion")
    training = _materialize(instance, ["trained_model", "onnx_model", "evaluation_report", "registered_model",
                                       "champion_model"])  # fmt: skip
    timings["training_s"] = time.perf_counter() - start
    registered = training.output_for_node("registered_model")
    gate = next(e for e in training.get_asset_check_evaluations() if e.check_name == "promotion_gate")

    start = _step("backfill batch_predictions for 2013-01..2013-12: " + " ".join(BACKFILL_COMMAND))
    backfill = subprocess.run([os.path.join(os.path.dirname(sys.executable), BACKFILL_COMMAND[0]),
                               *BACKFILL_COMMAND[1:]], capture_output=True, text=True)  # fmt: skip
    timings["backfill_s"] = time.perf_counter() - start
    if backfill.returncode != 0:
        print(backfill.stdout[-2000:], backfill.stderr[-4000:])
        return 1

    resources = local_resources()
    champion = resources["registry"].version_by_alias(CHAMPION)
    challenger = registered["evaluation"]["challenger"]
    print("\n==> Summary")
    print(f"  challenger: {resources['registry'].model_name} v{registered['version']}, AUC {challenger['auc']:.4f} on")
    print(f"    {registered['evaluation_month']}, MLflow run {registered['mlflow_run_id']}")
    print(f"  promotion: {gate.metadata['decision'].value} - {gate.metadata['reason'].value}")
    print(f"  champion now: v{champion.version if champion else 'none'}")
    print(f"  batch predictions, 12 months: {resources['store'].root}/predictions/")
    print("  stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print("  Dagster UI: `make ui`, then http://127.0.0.1:3000 (the runs above are in $DAGSTER_HOME)")
    print("  MLflow UI:  `make mlflow-ui`, then http://127.0.0.1:5000")
    return 0 if training.success or gate.metadata["decision"].value == "refused" else 1


if __name__ == "__main__":
    sys.exit(main())
