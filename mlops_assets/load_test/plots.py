"""The load test's two pictures as PNG bytes: latency against offered load, and server memory over the run."""

from __future__ import annotations

import io

from mlops_assets.load_test.figures import PhaseFigures
from mlops_assets.load_test.memory import MIB


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def latency_plot(phases: list[PhaseFigures], slo_p99_ms: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on a run worker
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    offered = [phase.offered_rps for phase in phases]
    axes.plot(offered, [phase.p50_ms for phase in phases], "o-", label="p50")
    axes.plot(offered, [phase.p99_ms for phase in phases], "s-", label="p99")
    axes.axhline(slo_p99_ms, color="red", linestyle="--", label=f"SLO p99 {slo_p99_ms:g} ms")
    axes.set(xscale="log", xlabel="offered load (requests/s)", ylabel="latency (ms)", title="Latency vs offered load")
    axes.legend()
    return _png(figure)


def memory_plot(rss_samples: list[tuple[float, int]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot([t for t, _ in rss_samples], [rss / MIB for _, rss in rss_samples])
    axes.set(xlabel="seconds into the load test", ylabel="server RSS (MiB)", title="Server memory over the run")
    axes.set_ylim(bottom=0)
    return _png(figure)
