"""The gates a canary passes at every step, judged on one time window for canary and champion. No Dagster here.

Figures come from the servers' per-version counters and histograms, differenced over the window, so a
scrape of `/metrics` and a PromQL query give the same inputs. A gate with too little evidence neither
passes nor fails: the step holds until it has enough or its dwell time says the canary is starved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Histogram:
    """Counts per bucket (not cumulative); `bounds` are the upper edges, one more bucket holds +Inf."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]

    def __post_init__(self):
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(f"{len(self.bounds)} bounds need {len(self.bounds) + 1} counts, got {len(self.counts)}")
        if any(c < 0 for c in self.counts):
            raise ValueError("a histogram window has a negative count: the counters were reset inside it")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations between an earlier reading of the same counters and this one."""
        if earlier.bounds != self.bounds:
            raise ValueError("histograms with different bounds cannot be differenced")
        return Histogram(self.bounds, tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True)))

    def quantile(self, q: float) -> float:
        """PromQL's histogram_quantile: linear inside the bucket; the +Inf bucket answers its lower edge."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile {q} is outside [0, 1]")
        if self.total == 0:
            return math.nan
        rank, seen = q * self.total, 0
        for i, count in enumerate(self.counts):
            if count and seen + count >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lower = 0.0 if i == 0 else self.bounds[i - 1]
                return lower + (self.bounds[i] - lower) * (rank - seen) / count
            seen += count
        return self.bounds[-1]

    def shares(self) -> list[float]:
        return [c / self.total for c in self.counts] if self.total else [0.0] * len(self.counts)


@dataclass(frozen=True)
class VersionWindow:
    """One version's traffic inside the judged window."""

    version: str
    requests: int
    failures: int
    latency: Histogram  # seconds per request
    scores: Histogram | None = None  # the model's output scores, when the server reports them

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else math.nan


@dataclass(frozen=True)
class GateSettings:
    min_requests: int = 200
    """Fewest canary requests in the window before any gate may pass or fail."""
    error_rate_margin: float = 0.01
    """The canary's failure rate may exceed the champion's by this much (absolute)."""
    p99_slo_seconds: float = 0.05
    """The canary's p99 request latency must stay under this."""
    p99_ratio: float = 1.5
    """... and within this multiple of the champion's p99 on the same window."""
    max_score_distance: float = 0.1
    """Jensen-Shannon distance between the canary's and the champion's score histograms."""


@dataclass(frozen=True)
class GateResult:
    gate: str
    observed: float
    threshold: float
    passed: bool | None  # None: not enough evidence yet
    detail: str


def jensen_shannon(p: list[float], q: list[float]) -> float:
    """Distance (base 2, in [0, 1]) between two distributions over the same buckets."""
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x: list[float]) -> float:
        return sum(a * math.log2(a / b) for a, b in zip(x, m, strict=True) if a > 0)

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def judge(canary: VersionWindow, champion: VersionWindow, settings: GateSettings) -> list[GateResult]:
    """Every gate's observed value, threshold and verdict for one step's window."""
    if canary.requests < settings.min_requests:
        waiting = f"{canary.requests} canary requests of the {settings.min_requests} needed"
        return [GateResult("evidence", canary.requests, settings.min_requests, None, waiting)]
    results = []
    champion_rate = 0.0 if champion.requests == 0 else champion.error_rate
    limit = champion_rate + settings.error_rate_margin
    results.append(
        GateResult(
            "error_rate",
            canary.error_rate,
            limit,
            canary.error_rate <= limit,
            f"canary v{canary.version} failed {canary.failures} of {canary.requests} ({canary.error_rate:.2%}); "
            f"champion v{champion.version} {champion_rate:.2%} + margin {settings.error_rate_margin:.2%}",
        )
    )
    p99 = canary.latency.quantile(0.99)
    champion_p99 = champion.latency.quantile(0.99) if champion.latency.total else math.nan
    limit = settings.p99_slo_seconds
    if not math.isnan(champion_p99):
        limit = min(limit, settings.p99_ratio * champion_p99)
    results.append(
        GateResult(
            "p99_latency",
            p99,
            limit,
            p99 <= limit,
            f"canary p99 {p99 * 1e3:.2f} ms; SLO {settings.p99_slo_seconds * 1e3:.2f} ms, "
            f"{settings.p99_ratio} x champion p99 {champion_p99 * 1e3:.2f} ms",
        )
    )
    if canary.scores is not None and champion.scores is not None and champion.scores.total:
        distance = jensen_shannon(canary.scores.shares(), champion.scores.shares())
        results.append(
            GateResult(
                "score_distribution",
                distance,
                settings.max_score_distance,
                distance <= settings.max_score_distance,
                f"Jensen-Shannon distance {distance:.3f} between canary and champion scores "
                f"({canary.scores.total} and {champion.scores.total} rows)",
            )
        )
    return results


def failed(results: list[GateResult]) -> list[GateResult]:
    return [r for r in results if r.passed is False]
