"""Per-version readings of the servers' cumulative counters, from the Prometheus text format. No Dagster here.

A gate's window is the difference of two readings (step start, now), so the embedded default (scraping
each replica's `/metrics`) and a Prometheus server give the controller the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from mlops_assets.rollout.gates import Histogram, VersionWindow

SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
LATENCY = "mlops_serve_request_duration_seconds"


@dataclass(frozen=True)
class VersionReading:
    """Cumulative counts of one version, summed over the replicas read."""

    version: str
    successes: int
    failures: int
    latency: Histogram

    def since(self, earlier: VersionReading) -> VersionWindow:
        """The traffic between an earlier reading (a step's start) and this one."""
        successes, failures = self.successes - earlier.successes, self.failures - earlier.failures
        if successes < 0 or failures < 0:
            raise ValueError(f"v{self.version}'s counters went backwards: a replica restarted inside the window")
        return VersionWindow(self.version, successes + failures, failures, self.latency.minus(earlier.latency))

    def plus(self, other: VersionReading) -> VersionReading:
        counts = tuple(a + b for a, b in zip(self.latency.counts, other.latency.counts, strict=True))
        return VersionReading(
            self.version,
            self.successes + other.successes,
            self.failures + other.failures,
            Histogram(self.latency.bounds, counts),
        )


def parse_exposition(text: str, model: str) -> dict[str, VersionReading]:
    """Every version of `model` in one `/metrics` page."""
    successes: dict[str, float] = {}
    failures: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model:
                continue
            version = labels.get("version", "")
            if sample.name in (SUCCESS, f"{SUCCESS}_total"):
                successes[version] = successes.get(version, 0) + sample.value
            elif sample.name in (FAILURE, f"{FAILURE}_total"):
                failures[version] = failures.get(version, 0) + sample.value
            elif sample.name == f"{LATENCY}_bucket":
                buckets.setdefault(version, {})[float(labels["le"])] = sample.value
    return {v: reading(v, successes[v], failures.get(v, 0), buckets.get(v, {})) for v in successes}


def reading(version: str, successes: float, failures: float, cumulative: dict[float, float]) -> VersionReading:
    """A version's reading from its counters and its latency buckets as exposed (cumulative, by `le`)."""
    edges = sorted(cumulative)
    counts = [int(cumulative[e] - (cumulative[edges[i - 1]] if i else 0)) for i, e in enumerate(edges)]
    bounds = tuple(e for e in edges if e != float("inf"))
    if len(counts) == len(bounds):  # no +Inf bucket exposed
        counts.append(0)
    return VersionReading(version, int(successes), int(failures), Histogram(bounds, tuple(counts)))


def combine(pages: list[dict[str, VersionReading]]) -> dict[str, VersionReading]:
    """One reading per version over several replicas."""
    combined: dict[str, VersionReading] = {}
    for page in pages:
        for version, reading in page.items():
            combined[version] = combined[version].plus(reading) if version in combined else reading
    return combined
