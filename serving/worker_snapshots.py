"""The numbers of several worker processes as one: each worker writes a snapshot of its `ServerStats` to a
shared folder every second (and on shutdown); the parent's `/metrics` sums them (`merge_snapshots`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from serving.metrics import ServerStats


def merge_snapshots(snapshots: list[dict]) -> dict:
    """Sum the snapshots of several workers into one of the same shape."""
    if len(snapshots) == 1:
        return snapshots[0]
    models: dict[tuple[str, str], dict] = {}
    merged = {
        "models": [],
        "swaps": {},
        "swap_failures": [],
        "unknown_model_failures": {},
        "log": {"written": 0, "dropped": {}, "evicted_bytes": 0, "shipped": 0, "ship_errors": {}},
        "loaded": [],
        # Every worker reads the one mirror's counters: report the freshest, never a sum.
        "registry": max(
            (s["registry"] for s in snapshots if s.get("registry")), key=lambda r: r["polls"], default=None
        ),
    }
    failures: dict[tuple[str, str], int] = {}
    loaded = set()
    for snap in snapshots:
        for m in snap["models"]:
            key = (m["name"], m["version"])
            if key not in models:
                models[key] = json.loads(json.dumps(m))
                continue
            into = models[key]
            for k in ("success", "fail", "queue", "compute_infer"):
                into[k] = [a + b for a, b in zip(into[k], m[k], strict=True)]
            for k in ("pending", "compute_input_ns", "compute_output_ns", "inference_count", "execution_count"):
                into[k] += m[k]
            into["last_inference_ms"] = max(into["last_inference_ms"], m["last_inference_ms"])
            for reason, n in m["fail_reasons"].items():
                into["fail_reasons"][reason] = into["fail_reasons"].get(reason, 0) + n
            for size, (count, ns) in m["batch_stats"].items():
                have = into["batch_stats"].setdefault(size, [0, 0])
                have[0] += count
                have[1] += ns
            for h, data in m["hist"].items():
                into["hist"][h]["counts"] = [
                    a + b for a, b in zip(into["hist"][h]["counts"], data["counts"], strict=True)
                ]
                into["hist"][h]["sum"] += data["sum"]
        for model, n in snap["swaps"].items():
            merged["swaps"][model] = merged["swaps"].get(model, 0) + n
        for model, reason, n in snap["swap_failures"]:
            failures[(model, reason)] = failures.get((model, reason), 0) + n
        for code, n in snap["unknown_model_failures"].items():
            merged["unknown_model_failures"][code] = merged["unknown_model_failures"].get(code, 0) + n
        merged["log"]["written"] += snap["log"]["written"]
        for reason, n in snap["log"]["dropped"].items():
            merged["log"]["dropped"][reason] = merged["log"]["dropped"].get(reason, 0) + n
        merged["log"]["evicted_bytes"] += snap["log"]["evicted_bytes"]
        merged["log"]["shipped"] += snap["log"]["shipped"]
        for reason, n in snap["log"]["ship_errors"].items():
            merged["log"]["ship_errors"][reason] = merged["log"]["ship_errors"].get(reason, 0) + n
        for entry in snap["loaded"]:
            loaded.add((entry["model"], entry["version"], entry["alias"]))
    # The workers share one folder, so each counts every segment waiting there: the largest count, not the sum.
    merged["log"]["pending_segments"] = max(s["log"]["pending_segments"] for s in snapshots)
    merged["models"] = list(models.values())
    merged["swap_failures"] = [[m, r, n] for (m, r), n in failures.items()]
    merged["loaded"] = [{"model": m, "version": v, "alias": a} for m, v, a in sorted(loaded)]
    return merged


class SnapshotPublisher(threading.Thread):
    """A worker's thread that writes its snapshot to `folder/worker-<pid>.json` every `interval` s."""

    def __init__(self, stats: ServerStats, folder: Path, interval: float = 1.0):
        super().__init__(name="metrics-snapshot", daemon=True)
        self._stats = stats
        self._path = Path(folder) / f"worker-{os.getpid()}.json"
        self._interval = interval
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            self.publish()

    def publish(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._stats.snapshot()))
        os.replace(tmp, self._path)

    def stop(self) -> None:
        self._stop.set()
        self.publish()


def read_snapshots(folder: Path) -> list[dict]:
    snapshots = []
    for path in sorted(Path(folder).glob("worker-*.json")):
        try:
            snapshots.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a worker is replacing it right now; the next scrape gets it
    return snapshots
