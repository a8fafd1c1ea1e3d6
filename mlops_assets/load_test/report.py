"""The load test's result as a person reads it: a table of phases and the figures the demo prints."""

from __future__ import annotations

from mlops_assets.load_test.figures import PhaseFigures


def phase_table(phases: list[PhaseFigures]) -> str:
    """Markdown: one row per offered rate."""
    rows = [
        "| offered req/s | achieved req/s | answered req/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in phases:
        errors = ", ".join(f"{status} {count}" for status, count in phase.errors.items()) or "none"
        rows.append(
            f"| {phase.offered_rps:g} | {phase.arrival_rps:.1f} | {phase.throughput_rps:.1f} | {phase.p50_ms:.2f} "
            f"| {phase.p99_ms:.2f} | {phase.p999_ms:.2f} | {errors} | {phase.server_cpu_s:.2f} |"
        )
    return "\n".join(rows)


def demo_figures(load_test: dict) -> dict[str, str]:
    """What `make demo` prints from the `load_test` asset's value: throughput at the SLO, p99 at the highest
    offered load, and the cost per 1,000 predictions served next to the model-compute-only figure."""
    if not load_test["tested"]:
        return {"load test": f"not run: {load_test['reason']}"}
    top = load_test["phases"][-1]
    cost = load_test["served_usd_per_1000_predictions"]
    compute = load_test["model_compute_only_usd_per_1000_predictions"]
    within = load_test["rps_within_slo"]
    return {
        "load test": "passed" if load_test["passed"] else "refused: " + "; ".join(load_test["reasons"]),
        "throughput at the SLO": f"{within:.0f} req/s" if within else "none (the SLO failed at every load)",
        f"p99 at {top['offered_rps']:g} req/s": f"{top['p99_ms']:.1f} ms (SLO {load_test['slo_p99_ms']:g} ms)",
        "cost per 1,000 predictions (served)": f"${cost:.3g}" if cost is not None else "not measured",
        "cost per 1,000 predictions (model compute only)": f"${compute:.3g}" if compute is not None else "unknown",
    }
