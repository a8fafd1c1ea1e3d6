"""What one offered rate did to the server, and whether the SLO held: arithmetic on the requests a load
generator recorded, so the rules read as rules and run without a server."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

OK = "OK"
SHED = "RESOURCE_EXHAUSTED"  # the server refusing work it cannot queue, rather than letting latency grow


@dataclass(frozen=True)
class PhaseRecord:
    """Every request sent at one offered rate: when it left (s from the phase start), how long it took, and its
    gRPC status; plus the server's and the generator's CPU seconds over the phase."""

    offered_rps: float
    duration_s: float
    sent_at_s: tuple[float, ...]
    latency_ms: tuple[float, ...]
    status: tuple[str, ...]
    server_cpu_s: float
    generator_cpu_s: float


@dataclass(frozen=True)
class PhaseFigures:
    offered_rps: float
    arrival_rps: float
    """Arrival rate the generator achieved: requests sent over the span between the first and the last."""
    throughput_rps: float
    """Successful answers per second of the phase."""
    requests: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    error_rate: float
    errors: dict[str, int]
    server_cpu_s: float
    generator_cpu_s: float


@dataclass(frozen=True)
class Slo:
    p99_ms: float
    error_rate: float


def arrival_rps(sent_at_s: tuple[float, ...]) -> float:
    """Requests per second between the first and the last send (n sends span n - 1 intervals)."""
    if len(sent_at_s) < 2:
        return 0.0
    span = max(sent_at_s) - min(sent_at_s)
    return (len(sent_at_s) - 1) / span if span > 0 else 0.0


def summarize(record: PhaseRecord) -> PhaseFigures:
    statuses = Counter(record.status)
    requests = len(record.status)
    answered = [ms for ms, status in zip(record.latency_ms, record.status, strict=True) if status == OK]
    # Latency of answers only: a shed request returns at once and would flatter the tail.
    quantiles = np.percentile(answered, [50, 99, 99.9]) if answered else [float("nan")] * 3
    errors = {status: count for status, count in sorted(statuses.items()) if status != OK}
    return PhaseFigures(
        offered_rps=record.offered_rps,
        arrival_rps=arrival_rps(record.sent_at_s),
        throughput_rps=statuses[OK] / record.duration_s,
        requests=requests,
        p50_ms=float(quantiles[0]),
        p99_ms=float(quantiles[1]),
        p999_ms=float(quantiles[2]),
        error_rate=sum(errors.values()) / requests if requests else 1.0,
        errors=errors,
        server_cpu_s=record.server_cpu_s,
        generator_cpu_s=record.generator_cpu_s,
    )


def slo_breaches(phase: PhaseFigures, slo: Slo) -> list[str]:
    """Why `phase` misses the SLO, in words; empty when it holds."""
    breaches = []
    if not phase.p99_ms <= slo.p99_ms:  # NaN (nothing answered) breaches too
        breaches.append(f"p99 {phase.p99_ms:.1f} ms > SLO {slo.p99_ms:g} ms at {phase.offered_rps:g} req/s")
    if phase.error_rate > slo.error_rate:
        named = ", ".join(f"{status} {count}" for status, count in phase.errors.items())
        breaches.append(
            f"error rate {phase.error_rate:.2%} > SLO {slo.error_rate:.2%} at {phase.offered_rps:g} req/s ({named})"
        )
    return breaches


def pacing_shortfall(phase: PhaseFigures, tolerance: float) -> str | None:
    """Words when the generator did not offer the rate it was asked to (then the figures say nothing of the server)."""
    if abs(phase.arrival_rps - phase.offered_rps) <= tolerance * phase.offered_rps:
        return None
    return (
        f"the load generator offered {phase.arrival_rps:.1f} req/s instead of {phase.offered_rps:g} "
        f"(tolerance {tolerance:.0%}): the figures at this rate do not describe the server"
    )


def shedding_begins_rps(phases: list[PhaseFigures]) -> float | None:
    """The lowest offered rate at which the server answered RESOURCE_EXHAUSTED, None if it never shed."""
    shed = [phase.offered_rps for phase in phases if phase.errors.get(SHED)]
    return min(shed) if shed else None


def rps_within_slo(phases: list[PhaseFigures], slo: Slo) -> float | None:
    """The highest throughput of a phase that met the SLO: what one server delivers at the SLO."""
    held = [phase.throughput_rps for phase in phases if not slo_breaches(phase, slo)]
    return max(held) if held else None
