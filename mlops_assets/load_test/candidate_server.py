"""The candidate on a loopback `mlops-serve` with production settings, for the length of a load test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 120.0

# deploy/k8s/serving.yaml's settings, less what needs a cluster (token, S3 shipping): one intra-op thread,
# only approved versions, every prediction logged. Real flights miss weather readings; the model imputes NaN.
PRODUCTION_ARGS = ("--require-approval", "--intra-op-threads", "1", "--nan-policy", "allow_nan")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def registry_source(tracking_uri: str, model_name: str, alias: str) -> tuple[str, ...]:
    """The flags that make mlops-serve follow `alias` of `model_name` in the registry at `tracking_uri`."""
    return ("--tracking-uri", tracking_uri, "--model-name", model_name, "--aliases", alias)


class CandidateServer:
    """`mlops-serve` serving `source` (registry_source(...), or --model-path for a file) with the production
    settings; `extra_args` come last, so they override them (a test's tiny queue, `--workers 2`)."""

    def __init__(self, source: tuple[str, ...], folder: Path, extra_args: tuple[str, ...] = ()):
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log_path = folder / "server.log"
        command = [str(Path(sys.executable).parent / "mlops-serve"), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--metrics-port", str(self.metrics_port), "--http-port", "-1"]
        command += list(source)
        command += ["--prediction-log-dir", str(folder / "prediction_log"), "--log-ship-to", "none"]
        command += ["--cache-dir", str(folder / "cache"), *PRODUCTION_ARGS, *extra_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_SERVE_", "MLFLOW_"))}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(f"http://127.0.0.1:{self.metrics_port}/ready"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"mlops-serve did not become ready; the end of its log:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> CandidateServer:
        self.wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
