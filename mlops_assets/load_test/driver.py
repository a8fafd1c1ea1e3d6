"""Drives a server at each offered rate in turn (one Locust process per phase) while a probe watches it."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mlops_assets.load_test.figures import PhaseRecord
from mlops_assets.load_test.probe import ServerProbe

STARTUP_ALLOWANCE_S = 60.0  # Locust's import and the payloads' encoding, before the phase's clock starts


@dataclass(frozen=True)
class Target:
    url: str
    model_name: str
    version: str


@dataclass(frozen=True)
class LoadRun:
    phases: list[PhaseRecord]
    rss_samples: list[tuple[float, int]]
    """(s since the run started, bytes) of the server's process tree; empty for a server on another machine."""


def run_phase(
    target: Target,
    payloads_path: Path,
    rps: float,
    duration_s: float,
    timeout_s: float,
    folder: Path,
    probe: ServerProbe | None,
    seed: int = 0,
) -> PhaseRecord:
    """`rps` arrivals per second for `duration_s` against `target`; the server's CPU is read around the phase."""
    spec = {**target.__dict__, "rps": rps, "duration_s": duration_s, "timeout_s": timeout_s, "seed": seed}
    spec_path, out_path = folder / f"phase-{rps:g}.json", folder / f"phase-{rps:g}.out.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "mlops_assets.load_test.locust_phase", str(spec_path), str(payloads_path)]
    cpu_before = probe.cpu_seconds() if probe else 0.0
    result = subprocess.run(
        [*command, str(out_path)],
        capture_output=True,
        text=True,
        timeout=duration_s + timeout_s + STARTUP_ALLOWANCE_S,
    )
    cpu_after = probe.cpu_seconds() if probe else 0.0
    if result.returncode != 0:
        raise RuntimeError(f"the Locust phase at {rps:g} req/s failed:\n{result.stderr[-2000:]}")
    measured = json.loads(out_path.read_text())
    return PhaseRecord(
        offered_rps=rps,
        duration_s=duration_s,
        sent_at_s=tuple(measured["sent_at_s"]),
        latency_ms=tuple(measured["latency_ms"]),
        status=tuple(measured["status"]),
        # The bracket includes Locust's start-up, while the server idles: a small, conservative overcount.
        server_cpu_s=cpu_after - cpu_before,
        generator_cpu_s=measured["generator_cpu_s"],
    )


def drive(
    target: Target,
    payloads: list[dict],
    rates: list[float],
    duration_s: float,
    timeout_s: float,
    folder: Path,
    server_pid: int | None,
) -> LoadRun:
    """Each rate in `rates` for `duration_s`, in order; `server_pid` (a local server) adds CPU and RSS."""
    payloads_path = folder / "payloads.pickle"
    payloads_path.write_bytes(pickle.dumps(payloads))
    if server_pid is None:
        phases = [run_phase(target, payloads_path, rps, duration_s, timeout_s, folder, None) for rps in rates]
        return LoadRun(phases=phases, rss_samples=[])
    with ServerProbe(server_pid) as probe:
        phases = [run_phase(target, payloads_path, rps, duration_s, timeout_s, folder, probe) for rps in rates]
    return LoadRun(phases=phases, rss_samples=list(probe.rss_samples))
