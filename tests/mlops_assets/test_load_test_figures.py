"""The load test's plain rules on known records: percentiles, pacing, shedding, memory, cost, the verdict."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlops_assets.load_test.cost import Prices, replicas_needed, served_cost
from mlops_assets.load_test.figures import (
    PhaseRecord,
    Slo,
    arrival_rps,
    pacing_shortfall,
    rps_within_slo,
    shedding_begins_rps,
    slo_breaches,
    summarize,
)
from mlops_assets.load_test.memory import MIB, memory_growth, rss_trend
from mlops_assets.load_test.plots import latency_plot, memory_plot
from mlops_assets.load_test.report import demo_figures, phase_table
from mlops_assets.load_test.verdict import refusals

SLO = Slo(p99_ms=50.0, error_rate=0.01)


def record(rps: float, seconds: float, latency_ms: float, shed_every: int = 0, cpu_s: float = 1.0) -> PhaseRecord:
    n = int(rps * seconds)
    statuses = tuple("RESOURCE_EXHAUSTED" if shed_every and i % shed_every == 0 else "OK" for i in range(n))
    return PhaseRecord(
        offered_rps=rps,
        duration_s=seconds,
        sent_at_s=tuple(i / rps for i in range(n)),
        latency_ms=tuple(latency_ms + (i % 10) * 0.1 for i in range(n)),
        status=statuses,
        server_cpu_s=cpu_s,
        generator_cpu_s=cpu_s / 2,
    )


def test_a_server_that_keeps_up_meets_the_slo():
    phase = summarize(record(20, 10, latency_ms=3.0))
    assert phase.requests == 200 and phase.errors == {} and phase.error_rate == 0
    assert phase.arrival_rps == pytest.approx(20)
    assert phase.throughput_rps == pytest.approx(20)
    assert 3.0 <= phase.p50_ms <= phase.p99_ms <= phase.p999_ms <= 3.9
    assert slo_breaches(phase, SLO) == [] and pacing_shortfall(phase, 0.1) is None


def test_slow_answers_and_shedding_are_named_with_their_figures():
    slow = summarize(record(200, 5, latency_ms=80.0, shed_every=4))
    assert slow.errors == {"RESOURCE_EXHAUSTED": 250}
    assert slow.error_rate == pytest.approx(0.25)
    breaches = slo_breaches(slow, SLO)
    assert "p99 80.9 ms > SLO 50 ms at 200 req/s" in breaches[0]
    assert "error rate 25.00% > SLO 1.00%" in breaches[1] and "RESOURCE_EXHAUSTED 250" in breaches[1]
    fast = summarize(record(20, 5, latency_ms=3.0))
    assert shedding_begins_rps([fast, slow]) == 200
    assert shedding_begins_rps([fast]) is None
    assert rps_within_slo([fast, slow], SLO) == pytest.approx(20)


def test_nothing_answered_breaches_the_latency_slo():
    phase = summarize(record(10, 2, latency_ms=1.0, shed_every=1))
    assert math.isnan(phase.p99_ms) and phase.error_rate == 1.0
    assert len(slo_breaches(phase, SLO)) == 2


def test_a_generator_that_fell_behind_is_named_not_blamed_on_the_server():
    behind = summarize(PhaseRecord(200, 5, tuple(i / 100 for i in range(500)), (1.0,) * 500, ("OK",) * 500, 1.0, 1.0))
    words = pacing_shortfall(behind, tolerance=0.1)
    assert words and "offered 100.0 req/s instead of 200" in words


@given(st.floats(1, 1000), st.integers(3, 500))
def test_arrival_rate_of_evenly_spaced_sends_is_their_rate(rps, n):
    assert arrival_rps(tuple(i / rps for i in range(n))) == pytest.approx(rps, rel=1e-6)


def test_flat_memory_passes_and_a_leak_fails():
    flat = [(t * 0.5, 200 * MIB + (t % 3) * MIB) for t in range(120)]
    trend = rss_trend(flat, warmup_s=5)
    assert abs(trend.growth_mib) < 2 and memory_growth(trend, max_growth_mib=16) is None
    leaking = [(t * 0.5, 200 * MIB + t * MIB // 2) for t in range(120)]
    trend = rss_trend(leaking, warmup_s=5)
    assert trend.growth_mib > 40
    words = memory_growth(trend, max_growth_mib=16)
    assert words and "memory is not flat" in words


def test_one_allocator_burst_is_not_a_leak():
    samples = [(t * 0.5, 200 * MIB) for t in range(100)]
    samples[60] = (30.0, 400 * MIB)
    trend = rss_trend(samples, warmup_s=0)
    assert trend.growth_mib == 0 and trend.peak_mib == 400


def test_cost_of_known_cpu_seconds_and_memory():
    # 2 CPU s for 1,000 requests, 0.5 GiB held for 100 s: 2 s x $0.036/h + 50 GiB-s x $0.0036/h.
    cost = served_cost(2.0, 1000, rss_gib=0.5, wall_s=100, rows_per_request=10, prices=Prices(0.036, 0.0036))
    assert cost.cpu_s_per_1000_requests == pytest.approx(2.0)
    assert cost.gib_s_per_1000_requests == pytest.approx(50.0)
    assert cost.usd_per_1000_requests == pytest.approx((2 * 0.036 + 50 * 0.0036) / 3600)
    assert cost.usd_per_1000_predictions == pytest.approx(cost.usd_per_1000_requests / 10)
    with pytest.raises(ValueError):
        served_cost(1.0, 0, 0.5, 10, 1, Prices(1, 1))


def test_replicas_for_the_declared_peak():
    assert replicas_needed(20, 200) == 1
    assert replicas_needed(500, 200) == 3
    assert replicas_needed(400, 200) == 2
    assert replicas_needed(20, None) is None


def test_the_verdict_lists_every_reason():
    phases = [summarize(record(20, 5, 3.0)), summarize(record(200, 5, 80.0, shed_every=4))]
    cost = served_cost(2.0, 1000, 0.5, 100, 1, Prices(0.036, 0.0036))
    assert refusals(phases[:1], SLO, 0.1, None, cost, None) == []
    reasons = refusals(phases, SLO, 0.1, "server RSS grew", cost, budget_usd_per_1000_predictions=1e-9)
    assert len(reasons) == 4
    assert reasons[-1].startswith("$") and "budget" in reasons[-1]


def test_the_phase_table_and_the_pictures():
    phases = [summarize(record(20, 5, 3.0)), summarize(record(200, 5, 80.0, shed_every=4))]
    table = phase_table(phases).splitlines()
    assert len(table) == 4 and "RESOURCE_EXHAUSTED 250" in table[-1] and table[2].startswith("| 20 | 20.0 |")
    assert latency_plot(phases, slo_p99_ms=50).startswith(b"\x89PNG")
    assert memory_plot([(t * 0.5, 200 * MIB) for t in range(10)]).startswith(b"\x89PNG")


def test_what_the_demo_prints():
    assert demo_figures({"tested": False, "reason": "promotion_gate did not approve v2"}) == {
        "load test": "not run: promotion_gate did not approve v2"
    }
    result = {
        "tested": True,
        "passed": False,
        "reasons": ["p99 80.9 ms > SLO 50 ms at 200 req/s"],
        "phases": [{"offered_rps": 20.0, "p99_ms": 3.1}, {"offered_rps": 200.0, "p99_ms": 80.9}],
        "slo_p99_ms": 50.0,
        "rps_within_slo": 20.0,
        "served_usd_per_1000_predictions": 1.2e-5,
        "model_compute_only_usd_per_1000_predictions": 5e-9,
    }
    assert demo_figures(result) == {
        "load test": "refused: p99 80.9 ms > SLO 50 ms at 200 req/s",
        "throughput at the SLO": "20 req/s",
        "p99 at 200 req/s": "80.9 ms (SLO 50 ms)",
        "cost per 1,000 predictions (served)": "$1.2e-05",
        "cost per 1,000 predictions (model compute only)": "$5e-09",
    }
