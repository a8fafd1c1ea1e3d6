"""training_data: served traffic and its delayed labels join the batch rows, and blocking checks refuse to train."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops_assets.features.assets import features_key
from mlops_assets.features_spec import FEATURES, ROW_KEY, TARGET
from mlops_assets.training import feedback
from mlops_assets.training.training_data import FLOORS_CHECK, HOLDOUT_CHECK
from tests.conftest import FAST_DATA, FAST_TRAIN, materialize
from tests.sensors.support import ship_served

MONTH = FAST_DATA["train_months"][0]
SELECTION = ["training_data", "trained_model"]
T0 = datetime(2013, 2, 1, tzinfo=UTC)


def _batch(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({c: rng.integers(0, 5, rows).astype(float) for c in FEATURES})
    frame[ROW_KEY] = [f"2013-01-{1 + i % 28:02d}/X/{i}" for i in range(rows)]
    frame[TARGET] = rng.integers(0, 2, rows)
    return frame


def _outcomes(keys, labels, arrived) -> pd.DataFrame:
    return pd.DataFrame({ROW_KEY: list(keys), TARGET: list(labels), "arrived_at": pd.to_datetime(list(arrived))})


def test_served_rows_replace_their_batch_rows_with_the_label_that_arrived():
    batch = _batch(10)
    served = batch.iloc[:4].copy()
    served["distance"] = 99.0  # the server saw other values than the batch data holds
    flipped = 1 - batch[TARGET].iloc[:4]
    arrived = [T0 - timedelta(hours=1)] * 3 + [T0 + timedelta(hours=1)]  # the fourth label comes after as_of
    frame, rows = feedback.month_rows(MONTH, batch, served, _outcomes(served[ROW_KEY], flipped, arrived), T0)

    assert rows == feedback.MonthRows(MONTH, batch_rows=6, served_rows=4, labelled_rows=3)
    assert len(frame) == rows.rows == 9
    from_served = frame[frame[ROW_KEY].isin(served[ROW_KEY])].set_index(ROW_KEY)
    assert (from_served["distance"] == 99.0).all()
    assert from_served[TARGET].to_dict() == flipped.iloc[:3].set_axis(served[ROW_KEY].iloc[:3]).to_dict()
    assert served[ROW_KEY].iloc[3] not in set(frame[ROW_KEY])  # unlabelled: neither served nor batch row
    assert feedback.label_coverage([rows]) == 0.75 and feedback.served_share([rows]) == pytest.approx(3 / 9)


@settings(max_examples=60, deadline=None)
@given(hours=st.lists(st.integers(-48, 48), min_size=1, max_size=30), as_of_hours=st.integers(-48, 48))
def test_no_label_that_arrived_after_as_of_is_trained_on(hours, as_of_hours):
    batch = _batch(len(hours))
    arrived = [T0 + timedelta(hours=h) for h in hours]
    as_of = T0 + timedelta(hours=as_of_hours)
    frame, rows = feedback.month_rows(MONTH, batch, batch, _outcomes(batch[ROW_KEY], batch[TARGET], arrived), as_of)
    expected = {k for k, h in zip(batch[ROW_KEY], hours, strict=True) if h <= as_of_hours}
    assert set(frame[ROW_KEY]) == expected and rows.labelled_rows == len(expected)


def test_floors_and_holdout_name_what_is_wrong():
    thin = feedback.MonthRows("2013-02", batch_rows=10, served_rows=100, labelled_rows=50)
    failures = feedback.floor_failures([thin], feedback.Floors(1_000, 100, 0.9, 0.9))
    assert len(failures) == 4
    assert "min_rows 1000" in failures[0] and "2013-02 (60)" in failures[1]
    assert "label coverage 0.500" in failures[2] and "served share 0.833" in failures[3]

    frame = _batch(5)
    frame.loc[0, ROW_KEY] = "2013-03-04/X/0"
    assert feedback.holdout_failures(frame, ["2013-01"], "2013-02", "2013-03") == [
        "1 training rows are flights of 2013-03"
    ]
    inside = feedback.holdout_failures(frame, ["2013-01"], "2013-02", "2013-01")
    assert "holdout month 2013-01 is a training or validation month" in inside[0]


def _ship_month(resources, fraction: float = 1.0) -> pd.DataFrame:
    store = resources["store"]
    frame = store.read_frame(features_key(MONTH))
    served = frame.sample(frac=fraction, random_state=0)
    ship_served(store, served, np.full(len(served), 0.5), "1", MONTH)
    return served


def _checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_feedback_training_uses_served_rows_and_arrived_outcomes(resources):
    served = _ship_month(resources, fraction=0.3)
    assert materialize(["outcomes"], resources, partition_key=MONTH).success
    result = materialize(SELECTION, resources, ops={"training_data": FAST_DATA, "trained_model": FAST_TRAIN})

    assert result.success
    value = result.output_for_node("training_data")
    assert value.label_coverage == 1.0 and value.served_share == pytest.approx(len(served) / value.rows)
    assert all(c.passed for c in _checks(result).values())
    assert result.output_for_node("trained_model").training_data_key == value.key
    assert len(resources["store"].read_frame(value.key)) == value.rows


def test_served_traffic_without_labels_blocks_training(resources):
    _ship_month(resources, fraction=0.3)  # no outcomes materialized: no served row has a label
    result = materialize(
        SELECTION, resources, ops={"training_data": FAST_DATA, "trained_model": FAST_TRAIN}, raise_on_error=False
    )

    assert not result.success
    floors = _checks(result)[FLOORS_CHECK]
    assert not floors.passed and "label coverage 0.000" in floors.description
    assert not [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "trained_model"]


def test_a_holdout_inside_the_window_blocks_training(resources):
    ops = {"training_data": {**FAST_DATA, "holdout_month": MONTH}, "trained_model": FAST_TRAIN}
    result = materialize(SELECTION, resources, ops=ops, raise_on_error=False)

    holdout = _checks(result)[HOLDOUT_CHECK]
    assert not result.success and not holdout.passed
    assert f"holdout month {MONTH} is a training or validation month" in holdout.description
    assert not [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "trained_model"]
