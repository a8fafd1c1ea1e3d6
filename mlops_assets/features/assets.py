"""validated_features: one month of typed features, stored only if the data contract holds.

A partition that fails any check is moved to quarantine/ instead of features/, so no later run
(training, scoring, drift) can read it, and its blocking checks stop the rest of this run.
"""

import dagster as dg
import pandas as pd

from mlops_assets.features import expectations
from mlops_assets.features_spec import FEATURES, LATE_THRESHOLD_MINUTES, ROW_KEY, TARGET
from mlops_assets.metadata import readable
from mlops_assets.partitions import monthly_partitions
from resources import ArtifactStore


class ValidationConfig(dg.Config):
    max_null_fraction: float = 0.05
    """Largest share of rows (0-1) in which a feature may be null."""
    min_rows: int = 1000
    """Fewest labelled rows a month must hold."""
    range_mostly: float = 0.999
    """Share of rows (0-1) that must lie inside each numeric range; sensors do misread."""


def features_key(partition: str) -> str:
    return f"features/{partition}.parquet"


def quarantine_key(partition: str) -> str:
    return f"quarantine/features/{partition}.parquet"


def build_features(raw: pd.DataFrame) -> pd.DataFrame:
    """Derive the feature frame without coercing types, so a wrong type stays visible to the checks.

    Rows without an arrival delay (cancelled or diverted flights) carry no label and are dropped.
    """
    if raw.empty:
        return pd.DataFrame()
    frame = raw.copy()
    if "arr_delay" in frame:
        frame = frame[frame["arr_delay"].notna()]
        frame[TARGET] = (frame["arr_delay"] > LATE_THRESHOLD_MINUTES).astype("int8")
    if {"year", "month", "day"} <= set(frame.columns):
        dates = pd.to_datetime(frame[["year", "month", "day"]], errors="coerce")
        frame["day_of_week"] = dates.dt.dayofweek
        if {"carrier", "flight", "origin", "hour", "minute"} <= set(frame.columns):
            frame[ROW_KEY] = (
                dates.dt.strftime("%Y-%m-%d")
                + "/"
                + frame["carrier"].astype(str)
                + frame["flight"].astype(str)
                + "/"
                + frame["origin"].astype(str)
                + "/"
                + frame["hour"].astype(str).str.zfill(2)
                + frame["minute"].astype(str).str.zfill(2)
            )
    keep = [c for c in (ROW_KEY, *FEATURES, TARGET) if c in frame.columns]
    return frame[keep].reset_index(drop=True)


def load_features(store: ArtifactStore, partitions: list[str]) -> pd.DataFrame:
    """Validated rows of the given months; refuses a month that is missing or failed its checks."""
    missing = [p for p in partitions if not store.exists(features_key(p))]
    if missing:
        raise dg.Failure(
            f"validated_features has no valid data for {missing}: materialize those partitions "
            "or fix the data that failed their checks (see quarantine/)"
        )
    return pd.concat([store.read_frame(features_key(p)) for p in partitions], ignore_index=True)


def _check_result(check: str, result: expectations.ContractResult, month: str) -> dg.AssetCheckResult:
    failures = result.failures_for(check)
    table = "\n".join(f"| {f.expectation} | {f.column} | {f.observed} |" for f in failures)
    metadata = {"month": month, "expectations_run": result.evaluated[check], "failed": len(failures)}
    if failures:
        metadata["failed_columns"] = ", ".join(sorted({f.column for f in failures}))
        metadata["failures"] = dg.MetadataValue.md("| expectation | column | observed |\n|---|---|---|\n" + table)
    verdict = f"failed on {metadata['failed_columns']}" if failures else "passed"
    return dg.AssetCheckResult(
        check_name=check,
        passed=not failures,
        metadata=metadata,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{month}: {verdict}",
    )


@dg.asset(
    partitions_def=monthly_partitions,
    group_name="features",
    kinds={"great_expectations", "parquet"},
    check_specs=[
        # Partitioned: each result says which month it judged, and a bad month marks only itself.
        dg.AssetCheckSpec(
            name, asset="validated_features", blocking=True, description=description, partitions_def=monthly_partitions
        )
        for name, description in expectations.CHECK_DESCRIPTIONS.items()
    ],
)
def validated_features(
    context: dg.AssetExecutionContext, config: ValidationConfig, raw_flights: pd.DataFrame, store: ArtifactStore
):
    """Typed schedule-time features and the late/not-late label for one month, checked by Great Expectations.

    A month that fails a check is quarantined and is not materialized: the checks report what
    failed, the step fails, and the month shows as failed (not as fresh data) to everything
    downstream, including the automation that reruns monitoring on new data.
    """
    partition = context.partition_key
    features = build_features(raw_flights)
    result = expectations.validate(
        features, max_null_fraction=config.max_null_fraction, min_rows=config.min_rows, range_mostly=config.range_mostly
    )
    check_results = [_check_result(check, result, partition) for check in expectations.CHECK_DESCRIPTIONS]
    if result.failures:
        store.delete(features_key(partition))
        path = store.write_frame(quarantine_key(partition), features)
        yield from check_results
        failed = ", ".join(sorted({f"{f.check} ({f.column})" for f in result.failures}))
        raise dg.Failure(
            f"{partition} failed validation: {failed}; quarantined at {path}",
            metadata={"quarantined": dg.MetadataValue.path(path), "rows": len(features)},
        )
    store.delete(quarantine_key(partition))
    path = store.write_frame(features_key(partition), features)
    late_rate = pd.to_numeric(features[TARGET], errors="coerce").mean() if TARGET in features else None
    yield dg.MaterializeResult(
        metadata=readable(
            {
                "rows": len(features),
                "late_rate": float(late_rate) if pd.notna(late_rate) else dg.MetadataValue.null(),
                "path": dg.MetadataValue.path(path),
            }
        ),
        check_results=check_results,
    )
