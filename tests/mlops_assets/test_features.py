import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mlops_assets.features.assets import features_key, load_features, quarantine_key
from mlops_assets.features_spec import (
    CATEGORICAL_FEATURES,
    CATEGORIES,
    FEATURES,
    LEAKY_COLUMNS,
    NUMERIC_FEATURES,
    RANGES,
    ROW_KEY,
    TARGET,
)
from resources import FlightSource, local_resources
from tests.conftest import materialize

MONTH = "2013-01"


def test_validated_features_are_typed_leak_free_and_stored(features_home):
    store = local_resources(features_home)["store"]
    frame = load_features(store, [MONTH])
    assert list(frame.columns) == [ROW_KEY, *FEATURES, TARGET]
    assert not set(LEAKY_COLUMNS) & set(frame.columns)
    assert frame[ROW_KEY].is_unique
    assert set(frame[TARGET].unique()) == {0, 1}
    assert 20_000 < len(frame) < 30_000  # January 2013 less cancelled flights


def test_the_contract_covers_every_feature_and_the_data_stays_inside_it(features_home):
    assert set(RANGES) == set(NUMERIC_FEATURES) and set(CATEGORIES) == set(CATEGORICAL_FEATURES)
    frame = load_features(local_resources(features_home)["store"], [MONTH])
    for column in CATEGORICAL_FEATURES:  # the shipped categories.json holds every value of the data
        assert set(frame[column].dropna().astype(str)) <= set(CATEGORIES[column]), column
    for column, (low, high) in RANGES.items():
        assert frame[column].dropna().between(low, high).mean() > 0.99, column


def test_good_month_passes_every_check_with_metadata(resources):
    result = materialize(["raw_flights", "validated_features"], resources, partition_key="2013-02")
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == {
        "schema",
        "null_fraction",
        "value_ranges",
        "category_sets",
        "row_count",
    }
    assert all(e.passed for e in evaluations)
    metadata = result.asset_materializations_for_node("validated_features")[0].metadata
    assert metadata["rows"].value > 20_000
    assert 0.05 < metadata["late_rate"].value < 0.5


def _broken(kind: str, month: pd.DataFrame) -> pd.DataFrame:
    frame = month.copy()
    if kind == "missing column":
        return frame.drop(columns=["distance"])
    if kind == "wrong type":
        frame["temp"] = "warm"
        return frame
    if kind == "all null":
        frame["visib"] = np.nan
        return frame
    if kind == "unseen category":
        frame.loc[frame.index[:500], "carrier"] = "ZZ"
        return frame
    raise ValueError(kind)


@pytest.mark.parametrize(
    ("kind", "check", "column"),
    [
        ("missing column", "schema", "distance"),
        ("wrong type", "schema", "temp"),
        ("all null", "null_fraction", "visib"),
        ("unseen category", "category_sets", "carrier"),
        ("empty file", "row_count", "(table)"),
    ],
)
def test_bad_input_fails_the_named_check_and_blocks_downstream(tmp_path, resources, kind, check, column):
    source = tmp_path / "flights.csv"
    if kind == "empty file":
        source.write_text("")
    else:
        _broken(kind, FlightSource().month(MONTH)).to_csv(source, index=False)
    resources = {**resources, "source": FlightSource(uri=str(source))}
    store = resources["store"]

    result = materialize(
        ["raw_flights", "validated_features", "batch_predictions"], resources, partition_key=MONTH, raise_on_error=False
    )

    assert not result.success
    failed = {e.check_name: e for e in result.get_asset_check_evaluations() if not e.passed}
    assert check in failed
    assert column in failed[check].metadata["failed_columns"].value
    assert column in failed[check].metadata["failures"].value
    assert not result.asset_materializations_for_node("batch_predictions"), "downstream ran on bad data"
    assert not result.asset_materializations_for_node("validated_features"), "a quarantined month looked fresh"
    # Later runs cannot read the month either: it sits in quarantine, not features/.
    assert store.exists(quarantine_key(MONTH)) and not store.exists(features_key(MONTH))
    with pytest.raises(dg.Failure, match=MONTH):
        load_features(store, [MONTH])


def test_source_reads_one_file_per_month_from_a_template(tmp_path):
    month = FlightSource().month("2013-03")
    month.to_parquet(tmp_path / "2013-03.parquet")
    templated = FlightSource(uri=str(tmp_path / "{partition}.parquet"))
    pd.testing.assert_frame_equal(templated.month("2013-03"), month)


def test_source_reads_s3(tmp_path, monkeypatch):
    # moto stands in for the AWS API, which cannot be reached from here.
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    month = FlightSource().month("2013-04").head(3000)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="flights")
        boto3.client("s3").put_object(Bucket="flights", Key="all.csv", Body=month.to_csv(index=False).encode())
        loaded = FlightSource(uri="s3://flights/all.csv").month("2013-04")
    assert len(loaded) == 3000
    assert list(loaded["carrier"]) == list(month["carrier"])


def test_source_without_month_columns_says_how_to_fix(tmp_path):
    path = tmp_path / "flights.csv"
    FlightSource().month("2013-01").drop(columns=["year", "month"]).head(10).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"\{partition\} template"):
        FlightSource(uri=str(path)).month("2013-01")
