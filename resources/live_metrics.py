"""LiveMetrics: what the serving replicas have answered so far, per model version.

The embedded default scrapes each replica's `/metrics`; production asks a Prometheus server that scrapes
them (`prometheus_url`), so a run pod needs no route to the pods. Both give cumulative counts summed over
replicas; the rollout differences two readings into the window its gates judge.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import dagster as dg
from pydantic import Field

from mlops_assets.rollout.readings import FAILURE, LATENCY, SUCCESS, VersionReading, combine, parse_exposition, reading


class LiveMetrics(dg.ConfigurableResource):
    scrape_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8002/metrics"])
    """Each replica's `/metrics` (the embedded default: `make serve`'s side port)."""
    prometheus_url: str | None = None
    """A Prometheus server scraping the replicas; when set, `scrape_urls` is not used."""
    timeout_seconds: float = 10.0

    def readings(self, model: str) -> dict[str, VersionReading]:
        if self.prometheus_url:
            return self._from_prometheus(model)
        return combine([parse_exposition(self._get(url), model) for url in self.scrape_urls])

    def _get(self, url: str) -> str:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_seconds) as response:
                return response.read().decode()
        except OSError as error:
            raise dg.Failure(f"live metrics: {url} did not answer ({error})") from error

    def _query(self, promql: str) -> list[dict]:
        url = f"{self.prometheus_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        body = json.loads(self._get(url))
        if body.get("status") != "success":
            raise dg.Failure(f"live metrics: Prometheus refused {promql!r}: {body.get('error')}")
        return body["data"]["result"]

    def _from_prometheus(self, model: str) -> dict[str, VersionReading]:
        selector = f'{{model="{model}"}}'

        def by_version(metric: str) -> dict[str, float]:
            rows = self._query(f"sum by (version) ({metric}{selector})")
            return {row["metric"].get("version", ""): float(row["value"][1]) for row in rows}

        successes, failures = by_version(SUCCESS), by_version(FAILURE)
        buckets: dict[str, dict[float, float]] = {}
        for row in self._query(f"sum by (version, le) ({LATENCY}_bucket{selector})"):
            edge = float(row["metric"]["le"])
            buckets.setdefault(row["metric"].get("version", ""), {})[edge] = float(row["value"][1])
        return {v: reading(v, successes[v], failures.get(v, 0), buckets.get(v, {})) for v in successes}
