"""Test data for monitoring: a small champion trained once, and synthetic months made from a training month.

Shared by tests/sensors and tests/mlops_assets/test_monitoring.py; the champion is trained once per
session whichever of them asks first.

Months in the champion home (the champion learns from 2013-01 only):
- 2013-01..03: the real validated features;
- 2013-04: an unchanged copy of 2013-01 (the training month itself, as a "new" month);
- 2013-05 and 2013-06: copies of 2013-01 with `distance` shifted by 3 standard deviations.
"""

from __future__ import annotations

import calendar
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets import months
from mlops_assets.features.assets import features_key
from mlops_assets.features_spec import FEATURES, ROW_KEY
from resources import local_resources
from sensors.jobs import TRAINING_SELECTION
from serving.log_records import encode_record, new_segment_name, segment_key
from tests.conftest import materialize, training_ops

CHAIN = TRAINING_SELECTION  # whatever training_job runs, so the champion is made the way retraining makes it
UNCHANGED, SHIFTED, SHIFTED_TOO = "2013-04", "2013-05", "2013-06"
SHIFTED_COLUMN = "distance"

_homes: dict[str, Path] = {}


def shifted(frame, column: str = SHIFTED_COLUMN, sigmas: float = 3.0):
    return frame.assign(**{column: frame[column] + sigmas * frame[column].std()})


def add_synthetic_months(home: Path) -> None:
    store = local_resources(home)["store"]
    january = store.read_frame(features_key("2013-01"))
    store.write_frame(features_key(UNCHANGED), dated(january, UNCHANGED))
    store.write_frame(features_key(SHIFTED), shifted(dated(january, SHIFTED)))
    store.write_frame(features_key(SHIFTED_TOO), shifted(dated(january, SHIFTED_TOO)))


def dated(frame: pd.DataFrame, month: str) -> pd.DataFrame:
    """January's flights as flights of `month`: the flight_id's date moves there (days the month lacks are
    dropped), so no copy passes off January flights, which training_data's holdout check would refuse."""
    day = frame[ROW_KEY].str[8:10].astype(int)
    kept = frame[day <= calendar.monthrange(*months.parse(month))[1]]
    return kept.assign(**{ROW_KEY: month + kept[ROW_KEY].str[7:]}).reset_index(drop=True)


def champion_home(features_home: Path, root: Path) -> Path:
    """A home whose registry holds a FAST_TRAIN champion (trained on 2013-01), built once per session."""
    key = str(features_home)
    if key not in _homes:
        home = root / "champion_home"
        shutil.copytree(features_home / "artifacts" / "features", home / "artifacts" / "features")
        add_synthetic_months(home)
        assert materialize(CHAIN, local_resources(home), ops=training_ops()).success
        _homes[key] = home
    return _homes[key]


def drift_report(resources: dict, instance: dg.DagsterInstance, month: str, **config) -> dict:
    """Materialize drift_report for one month on `instance`; its metadata as plain values."""
    result = materialize(
        ["drift_report"], resources, ops={"drift_report": config}, instance=instance, partition_key=month
    )
    metadata = result.asset_materializations_for_node("drift_report")[0].metadata
    return {key: value.value for key, value in metadata.items()}


def report_drift(instance: dg.DagsterInstance, month: str, drifted: bool, columns: str = "temp") -> None:
    """A drift_report materialization recorded straight into the event log (same query path, no Evidently)."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="drift_report",
            partition=month,
            metadata={
                "drifted": drifted,
                "drifted_share": 0.1 if drifted else 0.0,
                "drifted_columns": columns if drifted else "",
                "prediction_drifted": False,
            },
        )
    )


def scaled(frame, column: str = SHIFTED_COLUMN, factor: float = 1.5):
    """`column` multiplied by `factor`: a unit or scale change that leaves zeros where they were."""
    return frame.assign(**{column: frame[column] * factor})


def ship_served(store, frame: pd.DataFrame, scores: np.ndarray, version: str, month: str) -> None:
    """`frame` as the server logs it: one request a day of `month`, row keys = flight ids, event time that day."""
    days = pd.to_datetime(frame[ROW_KEY].str[:10]).dt.day.to_numpy()
    for day in np.unique(days):
        rows = frame[days == day]
        event = pd.Timestamp(f"{month}-{day:02d}T12:00:00Z")
        line = encode_record(
            event.timestamp() + 60,
            f"req-{month}-{day}",
            "flight_delay",
            version,
            {c: rows[c].to_numpy() for c in FEATURES},
            {"probability": scores[days == day].astype("float32")},
            row_keys=rows[ROW_KEY].tolist(),
            event_ts=event.timestamp(),
        )
        name = new_segment_name(event.date())
        store.write_bytes(segment_key(name), line)
