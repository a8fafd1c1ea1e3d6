"""Operational figures of one ONNX file, measured in a fresh process: `python session_probe.py REQUEST.pkl`.

Run as a script by `scorecard.probe`, never imported: a fresh interpreter holds nothing but numpy,
onnxruntime and the one session factory (serving.sessions, standard library at import), so the memory
it reports is the session's and the CPU time it reports is onnxruntime's. Sessions get the options
recorded with the model, at the two thread counts the scorecard compares.

Memory: Linux's peak resident set (VmHWM) is reset through /proc/self/clear_refs just before the
session is created; the reported peak is VmHWM after creating the session and running one full batch,
minus the resident set before. Elsewhere it falls back to the growth of ru_maxrss, which misses a
peak lower than the interpreter's own earlier peak.
"""

from __future__ import annotations

import json
import pickle
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

from serving.sessions import SessionOptions, create_session, recorded_options


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS to the current RSS
    except OSError:
        return False
    return True


def _session(model: str, recorded: SessionOptions, threads: int):
    # threads 0: onnxruntime's default, one thread per core
    return create_session(model, replace(recorded, intra_op_threads=threads))


def _timings(session, single: list[dict], batch: dict, warmup: int, repeats: int) -> dict[str, float]:
    import numpy as np

    for feeds in single[:warmup]:
        session.run(None, feeds)
    latencies = []
    for feeds in single:
        start = time.perf_counter()
        session.run(None, feeds)
        latencies.append(time.perf_counter() - start)
    session.run(None, batch)
    rows = len(next(iter(batch.values())))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        session.run(None, batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "latency_p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "latency_p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "rows_per_s": repeats * rows / wall,
        # process_time counts every thread of this process: onnxruntime's pool, spinning included.
        "cpu_s_per_row": cpu / (repeats * rows),
    }


def main(request_path: str) -> None:
    request = pickle.loads(Path(request_path).read_bytes())
    import numpy  # noqa: F401  (imported before the baseline, like onnxruntime, so neither counts)
    import onnxruntime  # noqa: F401

    recorded = recorded_options(request["model"])  # read before the baseline: the parse is not the session's
    before = _status_kib("VmRSS")
    exact = _reset_peak() and before is not None
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    session = _session(request["model"], recorded, threads=0)
    session.run(None, request["batch"])
    if exact:
        peak_kib = _status_kib("VmHWM") - before
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
    figures = {"peak_memory_mb": peak_kib / 1024, "memory_method": "VmHWM" if exact else "ru_maxrss"}

    for label, threads in (("all_threads", 0), ("one_thread", 1)):
        if threads != 0:
            session = _session(request["model"], recorded, threads=threads)
        timed = _timings(session, request["single"], request["batch"], request["warmup"], request["repeats"])
        figures.update({f"{key}_{label}": value for key, value in timed.items()})
    Path(request["output"]).write_text(json.dumps(figures))


if __name__ == "__main__":
    main(sys.argv[1])
