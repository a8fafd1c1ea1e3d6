"""What 1,000 served predictions cost, from the server's CPU seconds and memory under the declared load."""

from __future__ import annotations

import math
from dataclasses import dataclass

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Prices:
    vcpu_hour_usd: float
    gib_hour_usd: float


@dataclass(frozen=True)
class ServedCost:
    cpu_s_per_1000_requests: float
    gib_s_per_1000_requests: float
    """Memory held while 1,000 requests are served at the target load (RSS x wall time per request)."""
    usd_per_1000_requests: float
    usd_per_1000_predictions: float
    """One prediction is one row; a request carries rows_per_request of them."""


def served_cost(
    server_cpu_s: float, requests: int, rss_gib: float, wall_s: float, rows_per_request: int, prices: Prices
) -> ServedCost:
    if requests <= 0:
        raise ValueError("no requests were served: there is nothing to price")
    cpu_s = server_cpu_s * 1000 / requests
    gib_s = rss_gib * wall_s * 1000 / requests
    usd = (cpu_s * prices.vcpu_hour_usd + gib_s * prices.gib_hour_usd) / SECONDS_PER_HOUR
    return ServedCost(
        cpu_s_per_1000_requests=cpu_s,
        gib_s_per_1000_requests=gib_s,
        usd_per_1000_requests=usd,
        usd_per_1000_predictions=usd / rows_per_request,
    )


def replicas_needed(peak_rps: float, rps_within_slo: float | None) -> int | None:
    """Servers like the tested one needed for the declared peak at the SLO; None when none met the SLO."""
    if not rps_within_slo:
        return None
    return max(1, math.ceil(peak_rps / rps_within_slo - 1e-9))
