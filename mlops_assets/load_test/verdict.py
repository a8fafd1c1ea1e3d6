"""The load test's decision: every reason a candidate may not take live traffic, in words."""

from __future__ import annotations

from mlops_assets.load_test.cost import ServedCost
from mlops_assets.load_test.figures import PhaseFigures, Slo, pacing_shortfall, slo_breaches


def refusals(
    phases: list[PhaseFigures],
    slo: Slo,
    pacing_tolerance: float,
    memory_words: str | None,
    cost: ServedCost | None,
    budget_usd_per_1000_predictions: float | None,
) -> list[str]:
    """Empty when the candidate may take traffic. A generator that fell behind fails the run too: the
    figures would then describe the generator, not the candidate."""
    reasons = [words for phase in phases if (words := pacing_shortfall(phase, pacing_tolerance))]
    reasons += [breach for phase in phases for breach in slo_breaches(phase, slo)]
    if memory_words:
        reasons.append(memory_words)
    budget = budget_usd_per_1000_predictions
    if cost is not None and budget is not None and cost.usd_per_1000_predictions > budget:
        reasons.append(f"${cost.usd_per_1000_predictions:.3g} per 1,000 predictions > budget ${budget:.3g}")
    return reasons
