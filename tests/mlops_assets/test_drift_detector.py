"""The drift detector on real validated months, without Dagster: calibrated thresholds, the domain
classifier, importance to the model and the verdict (mlops_assets/monitoring/).

The reference is the default training window, 2013-01..03. Column verdicts are checked with the
same Evidently stat test that drift_report runs (stattests.column_score, checked against Evidently's
Report below), so every feature and both changes stay quick; the Report itself runs a few times.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES
from mlops_assets.monitoring import bands, detector, domain_classifier, stattests
from resources import local_resources

WINDOW = ("2013-01", "2013-02", "2013-03")

# Measured limits of any univariate test with a band this window allows (numbers: 2013-01..03):
# - temperature climbs about 0.6 reference sd per month inside the window, so January or February
#   warmed by one sd lands inside the window's own range (0.83 and 0.73 against a band of 0.93);
#   March warmed by one sd is warmer than anything in the window and drifts (1.39);
# - precipitation is zero on 92% of rows, so a 1.5x rain gauge moves it by 0.05-0.17 sd, under
#   its floor of 0.2 (the domain classifier leaves weather out, so nothing else sees it either).
INSIDE_NATURAL_RANGE = {("temp", "shift", "2013-01"), ("temp", "shift", "2013-02")}
TOO_SMALL_TO_SEE = {("precip", "scale", month) for month in WINDOW}


@pytest.fixture(scope="module")
def frames(features_home) -> dict[str, pd.DataFrame]:
    store = local_resources(features_home)["store"]
    return {month: load_features(store, [month]) for month in WINDOW}


@pytest.fixture(scope="module")
def reference(frames) -> pd.DataFrame:
    return pd.concat([frames[m] for m in WINDOW], ignore_index=True)


@pytest.fixture(scope="module")
def thresholds(reference) -> dict[str, bands.ColumnThreshold]:
    return bands.calibrate(reference, bands.Calibration())


def change(frame: pd.DataFrame, column: str, kind: str, reference: pd.DataFrame) -> pd.DataFrame:
    """One reference standard deviation added to `column`, or `column` scaled by 1.5."""
    moved = frame[column] + reference[column].std() if kind == "shift" else frame[column] * 1.5
    return frame.assign(**{column: moved})


def swap(frame: pd.DataFrame, column: str, a: str, b: str) -> pd.DataFrame:
    values = frame[column].astype(str)
    return frame.assign(**{column: np.where(values == a, b, np.where(values == b, a, values))})


def column_drifts(band: bands.ColumnThreshold, reference: pd.DataFrame, current: pd.DataFrame) -> tuple[bool, float]:
    score = stattests.column_score(band.method, band.column, reference[band.column], current[band.column])
    return stattests.is_drifted(band.method, score, band.threshold), score


def test_seasonal_columns_get_wide_bands_and_stable_columns_the_floor(thresholds):
    calibration = bands.Calibration()
    # Temperature moves by season inside a winter window; distance and the schedule do not.
    assert thresholds["temp"].source == "calibrated" and thresholds["temp"].threshold > 0.8
    for column in ("hour", "day_of_week", "distance", "carrier", "origin"):
        assert thresholds[column].source == "floor" and thresholds[column].threshold == calibration.floor(column)
    for band in thresholds.values():
        assert band.threshold >= calibration.floor(band.column)
        assert band.blocks >= 10 and band.block_days == calibration.block_days  # 90 days, a block every 7
        assert "x q0.9 of" in band.derivation
    assert thresholds["temp"].threshold == pytest.approx(calibration.factor * thresholds["temp"].natural, abs=1e-3)


def test_a_one_month_window_is_calibrated_on_half_month_blocks(frames):
    thresholds = bands.calibrate(frames["2013-01"], bands.Calibration())
    assert {b.block_days for b in thresholds.values()} == {15}
    assert all(b.blocks >= 3 for b in thresholds.values())
    assert thresholds["temp"].source == "calibrated" and thresholds["distance"].source == "floor"


CASES = [
    pytest.param(
        column,
        kind,
        month,
        (column, kind, month) not in INSIDE_NATURAL_RANGE | TOO_SMALL_TO_SEE,
        id=f"{column}-{kind}-{month}",
    )
    for column in NUMERIC_FEATURES
    for kind in ("shift", "scale")
    for month in WINDOW
]


@pytest.mark.parametrize(("column", "kind", "month", "expected"), CASES)
def test_every_numeric_feature_moved_by_one_sd_or_scaled_drifts(
    frames, reference, thresholds, column, kind, month, expected
):
    unchanged, _ = column_drifts(thresholds[column], reference, frames[month])
    assert unchanged is False  # the month itself sits inside its band
    drifted, score = column_drifts(thresholds[column], reference, change(frames[month], column, kind, reference))
    assert drifted is expected, f"{column} {kind} on {month}: {score:.3f} against {thresholds[column].threshold:.3f}"


def test_every_numeric_feature_has_a_change_that_drifts_in_every_month():
    for column in NUMERIC_FEATURES:
        for month in WINDOW:
            assert {(column, "shift", month), (column, "scale", month)} - INSIDE_NATURAL_RANGE - TOO_SMALL_TO_SEE


@pytest.mark.parametrize("month", WINDOW)
def test_months_inside_the_window_do_not_drift_and_scores_match_evidently(frames, reference, thresholds, month):
    result = detector.compute_drift(reference, frames[month])
    assert result.drifted is False and result.reasons == [] and result.drifted_columns == []
    assert result.classifier.auc < result.classifier.threshold
    for c in result.columns:
        assert c.threshold == thresholds[c.column].threshold  # Evidently ran with the calibrated thresholds
        expected = stattests.column_score(c.method, c.column, reference[c.column], frames[month][c.column])
        assert c.score == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert "Dataset Drift" in result.html


def test_a_shifted_copy_drifts_through_evidently_with_the_reasons(frames, reference):
    result = detector.compute_drift(reference, change(frames["2013-03"], "distance", "scale", reference))
    assert result.drifted is True and result.drifted_columns == ["distance"]
    assert result.reasons[0].startswith("distance wasserstein 0.7")  # 0.727 >= 0.2
    assert result.classifier.drifted and result.classifier.top()[0] == "distance"


@pytest.mark.parametrize(("column", "a", "b"), [("carrier", "UA", "B6"), ("origin", "EWR", "JFK")])
def test_swapped_category_labels_are_caught_by_the_domain_classifier(frames, reference, thresholds, column, a, b):
    # The two commonest labels have almost the same count: the column's own test barely moves.
    swapped = swap(frames["2013-02"], column, a, b)
    assert column_drifts(thresholds[column], reference, swapped)[0] is False
    result = domain_classifier.domain_classifier(reference, swapped, domain_classifier.DomainClassifier())
    assert result.drifted is True and result.auc >= 0.7
    assert column in result.top()
    rows = domain_classifier.DomainClassifier().rows
    assert result.rows == (rows, min(rows, len(swapped)))


def test_a_shift_only_in_combinations_is_caught_by_the_domain_classifier(frames, reference, thresholds):
    # Carriers shuffled across flights: every column's distribution is exactly the month's own.
    month = frames["2013-02"]
    shuffled = month.assign(carrier=np.random.default_rng(0).permutation(month["carrier"].to_numpy()))
    for column in FEATURES:
        assert stattests.column_score(
            thresholds[column].method, column, month[column], shuffled[column]
        ) == pytest.approx(0)
    result = detector.compute_drift(reference, shuffled)
    assert result.drifted_columns == [] and result.drifted is True
    assert result.classifier.auc >= 0.8 and result.classifier.top()[0] == "carrier"
    assert result.reasons == [f"domain classifier AUC {result.classifier.auc:.3f} >= 0.65 (separated by "
                              f"{', '.join(result.classifier.top())})"]  # fmt: skip


def test_the_classifier_is_seeded(frames, reference):
    settings = domain_classifier.DomainClassifier(rows=5_000)
    first = domain_classifier.domain_classifier(reference, frames["2013-02"], settings)
    assert domain_classifier.domain_classifier(reference, frames["2013-02"], settings) == first


def test_importance_is_the_share_of_the_models_reaction_to_each_column(frames):
    month = frames["2013-01"]
    importance = detector.model_importance(lambda f: f["hour"].to_numpy() / 24 + 0.001 * f["temp"].fillna(0), month)
    assert sum(importance.values()) == pytest.approx(1.0)
    assert importance["hour"] > 0.8 and 0 < importance["temp"] < 0.2
    assert all(importance[c] == 0 for c in FEATURES if c not in ("hour", "temp"))


def _result(
    drifted: dict[str, float | None], classifier: bool = False, prediction: bool = False
) -> detector.DriftResult:
    """A DriftResult with `drifted` columns (name -> importance) over their threshold, the rest under."""
    columns = [
        detector.ColumnDrift(c, "wasserstein", stattests.DISTANCE, 1.0 if c in drifted else 0.0, 0.5, c in drifted,
                          importance=drifted.get(c, 0.1))
        for c in FEATURES
    ]  # fmt: skip
    auc = 0.9 if classifier else 0.5
    return detector.DriftResult(
        columns=columns,
        drifted_share=len(drifted) / len(FEATURES),
        drifted_count=len(drifted),
        prediction=detector.ColumnDrift(
            "prediction", "wasserstein", stattests.DISTANCE, 0.6 if prediction else 0.1, 0.5, prediction
        ),  # fmt: skip
        html="",
        classifier=domain_classifier.ClassifierResult(auc, 0.65, classifier, {"carrier": 0.3}, (10, 10), ("carrier",)),
    )


@pytest.mark.parametrize(
    ("drifted", "classifier", "prediction", "verdict", "first_reason"),
    [
        ({}, False, False, False, None),
        ({"temp": 0.2}, False, False, True, "temp wasserstein 1 >= 0.5 (importance 0.20)"),
        ({"precip": 0.01}, False, False, False, None),  # drifted, but the model hardly looks at it
        ({"precip": None}, False, False, True, "precip wasserstein 1 >= 0.5"),  # importance unknown: it counts
        ({"precip": 0.01}, True, False, True, "precip wasserstein 1 >= 0.5 (importance 0.01) below importance 0.05"),
        ({}, True, False, True, "domain classifier AUC 0.900 >= 0.65 (separated by carrier)"),
        ({}, False, True, True, "prediction wasserstein 0.6 >= 0.5"),
        ({"precip": 0.01, "visib": 0.01, "wind_speed": 0.01}, False, False, True, "wind_speed wasserstein"),
    ],
)
def test_the_verdict_wants_drift_that_matters(drifted, classifier, prediction, verdict, first_reason):
    result = detector.decide(_result(drifted, classifier, prediction), detector.VerdictRule())
    assert result.drifted is verdict
    if verdict:
        assert result.reasons[0].startswith(first_reason) and result.ignored == []
    else:
        assert result.reasons == [] and len(result.ignored) == len(drifted)
    if len(drifted) >= 3:
        assert "3 of 10 columns drifted (>= share 0.3)" in result.reasons


def test_overrides_replace_only_their_column_and_bad_settings_are_refused(frames):
    january = frames["2013-01"]
    default = bands.calibrate(january, bands.Calibration())
    thresholds = bands.calibrate(january, bands.Calibration(overrides={"temp": 2.0}))
    assert thresholds["temp"].threshold == 2.0 and thresholds["temp"].source == "override"
    assert all(thresholds[c] == default[c] for c in FEATURES if c != "temp")
    with pytest.raises(ValueError, match="unknown columns"):
        bands.Calibration(overrides={"tmp": 1.0})
    with pytest.raises(ValueError, match="distance method"):
        bands.Calibration(num_method="ks")
    with pytest.raises(ValueError, match="classifier columns"):
        domain_classifier.DomainClassifier(columns=("carrier", "tail_number"))
    with pytest.raises(ValueError, match="flight_id"):
        bands.calibrate(january.drop(columns="flight_id"), bands.Calibration())
    assert set(CATEGORICAL_FEATURES) <= set(domain_classifier.SCHEDULE_COLUMNS)


def test_a_small_sample_of_an_unchanged_month_does_not_drift(frames, reference):
    # Served traffic is often a few thousand rows: by chance alone they wander further from the
    # reference than a month of batch rows, so the bands are calibrated on blocks of that size.
    # Measured: bands of full blocks flag 11 columns over ten 1,000-row samples of 2013-02.
    full = bands.calibrate(reference, bands.Calibration())
    sized = bands.calibrate(reference, bands.Calibration(), current_rows=1_000)
    alarms = {"full": 0, "sized": 0}
    for seed in range(10):
        sample = frames["2013-02"].sample(1_000, random_state=seed)
        for name, thresholds in (("full", full), ("sized", sized)):
            alarms[name] += sum(column_drifts(t, reference, sample)[0] for t in thresholds.values())
    assert alarms["sized"] == 0 and alarms["full"] > 0
    # Most of all for the column with the most categories (2013-01..03: 0.064 -> 0.176 for dest).
    assert sized["dest"].threshold > 2 * full["dest"].threshold
    assert detector.compute_drift(reference, frames["2013-02"].sample(1_000, random_state=0)).drifted is False
