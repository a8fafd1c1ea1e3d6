"""The data contract for validated_features, as a Great Expectations 1.x suite run per partition.

Expectations fall into the blocking asset checks below; each failure is reported with the
expectation, the column and the observed value so the UI says exactly what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mlops_assets.features_spec import (
    CATEGORICAL_FEATURES,
    CATEGORIES,
    FEATURES,
    NUMERIC_FEATURES,
    RANGES,
    ROW_KEY,
    TARGET,
)

SCHEMA, NULL_FRACTION, VALUE_RANGES, CATEGORY_SETS, ROW_COUNT = (
    "schema",
    "null_fraction",
    "value_ranges",
    "category_sets",
    "row_count",
)
CHECK_DESCRIPTIONS = {
    SCHEMA: "Every feature, the key and the target exist with the right type.",
    NULL_FRACTION: "No feature is null in more than the allowed fraction of rows.",
    VALUE_RANGES: "Numeric features stay within their physical ranges.",
    CATEGORY_SETS: "Categorical features hold only known categories.",
    ROW_COUNT: "The partition holds enough rows to learn from.",
}

NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "float32", "float64", "Int64", "Float64"]
TEXT_TYPES = ["object", "str", "string", "StringDtype"]


@dataclass
class Failure:
    check: str
    expectation: str
    column: str
    observed: str


@dataclass
class ContractResult:
    failures: list[Failure]
    evaluated: dict[str, int]  # expectations run per check

    def failures_for(self, check: str) -> list[Failure]:
        return [f for f in self.failures if f.check == check]


def _suite(
    columns: set[str], max_null_fraction: float, min_rows: int, range_mostly: float, categories: dict
) -> list[tuple[str, object]]:
    import great_expectations.expectations as gxe

    suite: list[tuple[str, object]] = []
    for column in (ROW_KEY, *FEATURES, TARGET):
        suite.append((SCHEMA, gxe.ExpectColumnToExist(column=column)))
    for column in (c for c in (ROW_KEY, *FEATURES, TARGET) if c in columns):
        types = TEXT_TYPES if column in (*CATEGORICAL_FEATURES, ROW_KEY) else NUMERIC_TYPES
        suite.append((SCHEMA, gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=types)))
    for column in (c for c in FEATURES if c in columns):
        suite.append((NULL_FRACTION, gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=1.0 - max_null_fraction)))
    for column in (c for c in NUMERIC_FEATURES if c in columns):
        low, high = RANGES[column]
        suite.append(
            (
                VALUE_RANGES,
                gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, mostly=range_mostly),
            )
        )
    if TARGET in columns:
        suite.append((CATEGORY_SETS, gxe.ExpectColumnValuesToBeInSet(column=TARGET, value_set=[0, 1])))
    for column in (c for c in CATEGORICAL_FEATURES if c in columns):
        suite.append((CATEGORY_SETS, gxe.ExpectColumnValuesToBeInSet(column=column, value_set=categories[column])))
    suite.append((ROW_COUNT, gxe.ExpectTableRowCountToBeBetween(min_value=min_rows)))
    return suite


def _observed(result: dict) -> str:
    if result.get("exception_info", {}).get("raised_exception"):
        return result["exception_info"]["exception_message"].splitlines()[0][:200]
    detail = result.get("result") or {}
    if "observed_value" in detail:
        return str(detail["observed_value"])
    if "unexpected_percent" in detail:
        sample = detail.get("partial_unexpected_list", [])[:5]
        return f"{detail['unexpected_percent']:.2f}% unexpected, e.g. {sample}"
    return "column missing"


def validate(
    frame: pd.DataFrame,
    *,
    max_null_fraction: float,
    min_rows: int,
    range_mostly: float,
    categories: dict[str, list[str]] | None = None,
) -> ContractResult:
    """Run the suite on one partition's features with an ephemeral GX context."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    suite = _suite(set(frame.columns), max_null_fraction, min_rows, range_mostly, categories or CATEGORIES)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("features")
        .add_dataframe_asset("partition")
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    failures, evaluated = [], dict.fromkeys(CHECK_DESCRIPTIONS, 0)
    for check, expectation in suite:
        result = batch.validate(expectation).to_json_dict()
        evaluated[check] += 1
        if not result["success"]:
            failures.append(
                Failure(
                    check=check,
                    expectation=result["expectation_config"]["type"],
                    column=getattr(expectation, "column", "(table)"),
                    observed=_observed(result),
                )
            )
    return ContractResult(failures=failures, evaluated=evaluated)
