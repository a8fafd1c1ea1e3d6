"""The parent of `--workers N > 1`: N worker processes share the gRPC and REST ports (SO_REUSEPORT);
the parent serves the HTTP side port itself (summing the workers' metrics), restarts a worker that
exits or wedges, and forwards SIGTERM to them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from serving.settings import ServeSettings
from serving.side_port import start_http
from serving.worker import HARD_STOP_MARGIN_S, Worker, guard_stop, run_event_loop

log = logging.getLogger("serving.supervisor")

# Worker states the parent reads from shared memory.
NOT_READY, READY, STALLED = 0, 1, 2


def _worker_main(config_dict: dict, index: int, states, beats) -> None:
    from serving import logs

    config = ServeSettings(**config_dict)
    logs.configure(config.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    worker = Worker(config)
    guard_stop(worker, {signal.SIGTERM})

    def report(ready: bool, healthy: bool) -> None:
        states[index] = READY if ready else (NOT_READY if healthy else STALLED)
        beats[index] = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host

    worker.on_beat = report
    run_event_loop(worker.run())


def run_workers(config: ServeSettings) -> int:
    from serving import logs
    from serving.mirror_process import MirrorProcess
    from serving.worker_snapshots import merge_snapshots, read_snapshots

    logs.configure(config.log_level)
    metrics_dir = Path(tempfile.mkdtemp(prefix="mlops-serve-metrics-"))
    child_config = config.model_dump()
    child_config["metrics_dir"] = str(metrics_dir)
    mirror = None if config.model_path else MirrorProcess.for_server(config)
    child_config["manifest_path"] = mirror.manifest if mirror else None
    ctx = multiprocessing.get_context("spawn")  # gRPC must not be forked after it started threads
    states = ctx.Array("b", config.workers, lock=False)
    beats = ctx.Array("d", config.workers, lock=False)  # 0 until a worker's first heartbeat
    stopping = threading.Event()
    restarts = {"exited": 0, "wedged": 0}
    started_at: dict[int, float] = {}

    def spawn(index: int):
        states[index], beats[index] = NOT_READY, 0.0
        process = ctx.Process(
            target=_worker_main, args=(child_config, index, states, beats), name=f"mlops-serve-{index}"
        )
        process.start()
        started_at[index] = time.monotonic()
        return process

    children = [spawn(i) for i in range(config.workers)]

    def stop(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def heartbeat_age(i: int) -> float | None:
        return time.monotonic() - beats[i] if beats[i] else None

    def wedged(i: int) -> bool:
        age = heartbeat_age(i)
        return states[i] == STALLED or (age is not None and age > config.stall_timeout)

    def ready() -> bool:
        return not stopping.is_set() and all(states[i] == READY and not wedged(i) for i in range(config.workers))

    def supervisor() -> dict:
        return {
            "workers": [
                {
                    "index": i,
                    "pid": children[i].pid,
                    "ready": states[i] == READY and not wedged(i),
                    "heartbeat_age_s": heartbeat_age(i),
                }
                for i in range(config.workers)
            ],
            "restarts": dict(restarts),
        }

    def snapshot() -> dict:
        snaps = read_snapshots(metrics_dir)
        if not snaps:
            from serving.metrics import ServerStats

            return ServerStats().snapshot()
        return merge_snapshots(snaps)

    def live() -> tuple[bool, str]:
        # The parent restarts wedged workers itself: its own liveness is that it supervises.
        return True, "ok"

    httpd = None
    if config.metrics_port >= 0:
        httpd = start_http(config.host, config.metrics_port, live, ready, snapshot, supervisor)
    log.info(
        "workers started", extra={"workers": config.workers, "port": config.port, "pids": [c.pid for c in children]}
    )
    exit_code = 0
    while not stopping.wait(0.5):
        for i, child in enumerate(children):
            if child.is_alive():
                if wedged(i):
                    age = heartbeat_age(i)
                    log.error(
                        "worker wedged; killing and restarting it",
                        extra={
                            "index": i,
                            "pid": child.pid,
                            "heartbeat_age_s": round(age, 1) if age is not None else None,
                            "stalled_batcher": states[i] == STALLED,
                        },
                    )
                    child.kill()
                    child.join(5)
                    restarts["wedged"] += 1
                    children[i] = spawn(i)
                continue
            states[i] = NOT_READY
            if time.monotonic() - started_at[i] < 10:
                # Dying right after start (a bad port, certificate or model) would only loop.
                log.error("worker failed at start; stopping", extra={"index": i, "exitcode": child.exitcode})
                exit_code = 1
                stopping.set()
                break
            log.error("worker exited; restarting it", extra={"index": i, "exitcode": child.exitcode})
            restarts["exited"] += 1
            children[i] = spawn(i)
    for child in children:
        if child.is_alive():
            os.kill(child.pid, signal.SIGTERM)
    # Each worker ends itself at grace + margin; a stopped (SIGSTOP) or stuck one is killed just after.
    deadline = time.monotonic() + config.grace_period + HARD_STOP_MARGIN_S + 1
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            log.error("worker did not stop in time; killing it", extra={"pid": child.pid})
            child.kill()
            child.join(5)
    if mirror is not None:
        mirror.stop()
    if httpd is not None:
        httpd.shutdown()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code
