"""The rollout's plain rules: window histograms, the gates, and the ladder's one transition rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops_assets.rollout.gates import GateSettings, Histogram, VersionWindow, jensen_shannon, judge
from mlops_assets.rollout.plan import DEFAULT_LADDER, Action, Phase, Rollout, Step, decide

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
SCORE_BOUNDS = tuple(i / 10 for i in range(1, 10))


def histogram(values, bounds=BOUNDS) -> Histogram:
    index = np.searchsorted(np.asarray(bounds), np.asarray(values), side="left")
    return Histogram(bounds, tuple(int(c) for c in np.bincount(index, minlength=len(bounds) + 1)))


def window(version, requests, failures, latencies, scores=None) -> VersionWindow:
    return VersionWindow(
        version, requests, failures, histogram(latencies), None if scores is None else histogram(scores, SCORE_BOUNDS)
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=0.2, allow_nan=False), min_size=1, max_size=300),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_quantile_lies_in_the_bucket_that_holds_the_true_quantile(values, q):
    h = histogram(values)
    estimate = h.quantile(q)
    rank = max(1, math.ceil(q * len(values)))
    true = sorted(values)[rank - 1]
    bucket = int(np.searchsorted(np.asarray(BOUNDS), true, side="left"))
    lower = 0.0 if bucket == 0 else BOUNDS[bucket - 1]
    upper = BOUNDS[-1] if bucket == len(BOUNDS) else BOUNDS[bucket]
    assert lower - 1e-12 <= estimate <= upper + 1e-12


def test_window_is_the_difference_of_two_readings_and_a_reset_is_refused():
    before, after = histogram([0.001] * 5), histogram([0.001] * 5 + [0.02] * 3)
    assert after.minus(before).counts == histogram([0.02] * 3).counts
    with pytest.raises(ValueError, match="reset"):
        before.minus(after)
    with pytest.raises(ValueError, match="different bounds"):
        after.minus(histogram([0.001], bounds=(0.001, 1.0)))
    assert math.isnan(Histogram(BOUNDS, (0,) * 8).quantile(0.99))


def test_jensen_shannon_is_zero_for_equal_and_one_for_disjoint_distributions():
    assert jensen_shannon([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert jensen_shannon([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)


rng = np.random.default_rng(7)
FAST = rng.uniform(0.001, 0.004, 1000)
SCORES = rng.beta(2, 5, 1000)


def test_a_good_canary_passes_every_gate_with_its_figures():
    results = judge(window("2", 500, 1, FAST[:500], SCORES[:500]), window("1", 1000, 2, FAST, SCORES), GateSettings())
    assert [r.gate for r in results] == ["error_rate", "p99_latency", "score_distribution"]
    assert all(r.passed for r in results), results
    assert "1 of 500" in results[0].detail


@pytest.mark.parametrize(
    ("canary", "gate"),
    [
        (window("2", 500, 25, FAST[:500], SCORES[:500]), "error_rate"),
        (window("2", 500, 0, FAST[:500] + 0.06, SCORES[:500]), "p99_latency"),
        (window("2", 500, 0, FAST[:500], 1 - SCORES[:500]), "score_distribution"),
    ],
)
def test_each_bad_canary_fails_the_gate_that_names_why(canary, gate):
    results = judge(canary, window("1", 1000, 2, FAST, SCORES), GateSettings())
    assert [r.gate for r in results if r.passed is False] == [gate]


def test_too_little_traffic_is_no_verdict_yet():
    (result,) = judge(window("2", 50, 10, FAST[:50]), window("1", 1000, 0, FAST), GateSettings())
    assert result.passed is None and "50 canary requests of the 200" in result.detail


LADDER = tuple(Step(s.name, s.canary_percent, s.shadow, 10.0) for s in DEFAULT_LADDER)
GOOD = judge(window("2", 500, 0, FAST[:500]), window("1", 1000, 0, FAST), GateSettings())
BAD = judge(window("2", 500, 100, FAST[:500]), window("1", 1000, 0, FAST), GateSettings())
WAITING = judge(window("2", 5, 0, FAST[:5]), window("1", 1000, 0, FAST), GateSettings())


def test_a_good_canary_climbs_every_step_after_its_dwell_and_is_promoted():
    rollout, now, actions = Rollout("2", "1", 0, 0.0), 0.0, []
    while not rollout.finished:
        now += 4.0
        decision = decide(rollout, LADDER, GOOD, now)
        actions.append(decision.action)
        rollout = decision.rollout
    assert actions.count(Action.ADVANCE) == len(LADDER) - 1 and actions[-1] == Action.PROMOTE
    assert actions.count(Action.HOLD) == 2 * len(LADDER)  # 4 s and 8 s of each 10 s dwell
    assert rollout.phase == Phase.PROMOTED and "takes all traffic" in rollout.reason


def test_a_failed_gate_rolls_back_at_once_with_the_reason_and_stays_rolled_back():
    decision = decide(Rollout("2", "1", 1, 0.0), LADDER, BAD, 1.0)
    assert decision.action == Action.ROLL_BACK and decision.rollout.phase == Phase.ROLLED_BACK
    assert decision.reason.startswith("canary 5%: error_rate failed")
    assert decide(decision.rollout, LADDER, GOOD, 100.0).action == Action.HOLD


def test_a_starved_step_holds_then_rolls_back_and_a_paused_one_only_holds():
    assert decide(Rollout("2", "1", 0, 0.0), LADDER, WAITING, 15.0).action == Action.HOLD
    starved = decide(Rollout("2", "1", 0, 0.0), LADDER, WAITING, 20.0)
    assert starved.action == Action.ROLL_BACK and "starved" in starved.reason
    paused = Rollout("2", "1", 0, 0.0, phase=Phase.PAUSED)
    assert decide(paused, LADDER, BAD, 50.0).action == Action.HOLD
