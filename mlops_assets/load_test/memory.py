"""Whether the server's memory stayed flat over a load test, judged from its RSS samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIB = 1024 * 1024


@dataclass(frozen=True)
class RssTrend:
    start_mib: float
    end_mib: float
    growth_mib: float
    peak_mib: float


def rss_trend(samples: list[tuple[float, int]], warmup_s: float) -> RssTrend:
    """RSS at the start and the end of the run after `warmup_s` (model load, first allocations), each the
    median of a quarter of the samples, so one allocator burst neither hides nor fakes a leak."""
    settled = [rss for t, rss in samples if t >= warmup_s] or [rss for _, rss in samples]
    if not settled:
        raise ValueError("no RSS samples: the server was not observed")
    quarter = max(1, len(settled) // 4)
    start = float(np.median(settled[:quarter])) / MIB
    end = float(np.median(settled[-quarter:])) / MIB
    return RssTrend(start_mib=start, end_mib=end, growth_mib=end - start, peak_mib=max(settled) / MIB)


def memory_growth(trend: RssTrend, max_growth_mib: float) -> str | None:
    """Words when RSS grew by more than `max_growth_mib` over the run, None when it stayed flat."""
    if trend.growth_mib <= max_growth_mib:
        return None
    return (
        f"server RSS grew {trend.growth_mib:.1f} MiB over the run ({trend.start_mib:.0f} -> {trend.end_mib:.0f} MiB, "
        f"allowed {max_growth_mib:g} MiB): memory is not flat"
    )
