"""`mlops-serve`: serve a registered MLflow model by name and alias, or one ONNX file with `--model-path`,
over the Open Inference Protocol on gRPC (8001) and HTTP/REST (8000, serving.rest), Triton's port layout.

Every option is declared once in serving.settings, with its environment variable. One process runs
one worker (serving.worker); `--workers N > 1` runs a parent over N of them (serving.supervisor).
"""

from __future__ import annotations

import signal
import sys

from serving.settings import ServeSettings, build_parser, parse_settings  # noqa: F401
from serving.side_port import start_worker_http
from serving.supervisor import run_workers
from serving.worker import Worker, guard_stop, run_event_loop

# Names kept for callers outside serving/ (tests/deploy, tests/benchmarks, tests/mlops_assets): serving itself
# says ServeSettings and parse_settings, and build_parser lives in serving.settings.
ServeConfig = ServeSettings
parse_config = parse_settings


def run_single(config: ServeSettings) -> int:
    from serving import logs

    logs.configure(config.log_level)
    worker = Worker(config)
    guard_stop(worker, {signal.SIGTERM, signal.SIGINT})
    httpd = None

    def started(w: Worker) -> None:
        nonlocal httpd
        if config.metrics_port >= 0:
            httpd = start_worker_http(w, config.host, config.metrics_port)

    try:
        run_event_loop(worker.run(started))
    finally:
        if httpd is not None:
            httpd.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    config = parse_settings(argv)
    if config.workers > 1:
        return run_workers(config)
    return run_single(config)


if __name__ == "__main__":
    sys.exit(main())
