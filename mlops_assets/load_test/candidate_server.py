"""The candidate on a loopback `mlops-serve` with production settings, for the length of a load test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlops_assets.oip_client import free_port, ready

READY_TIMEOUT_S = 120.0
REGISTRY_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # a Source sets them

# deploy/k8s/serving.yaml's settings, less what needs a cluster (token, S3 shipping): one intra-op thread,
# only approved versions, every prediction logged. Real flights miss weather readings; the model imputes NaN.
PRODUCTION_ARGS = ("--require-approval", "--intra-op-threads", "1", "--nan-policy", "allow_nan")


@dataclass(frozen=True)
class Source:
    """What mlops-serve serves: its flags and the environment they need."""

    args: tuple[str, ...]
    env: dict[str, str]


def registry_source(tracking_uri: str, model_name: str, alias: str) -> Source:
    """`alias` of `model_name` in the registry at `tracking_uri`. The server's download resolves
    mlflow-artifacts:// URIs with the environment's tracking URI, so the environment names it too."""
    args = ("--tracking-uri", tracking_uri, "--model-name", model_name, "--aliases", alias)
    return Source(args, {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri})


def file_source(path: Path) -> Source:
    """One ONNX file, no registry (benchmarks)."""
    return Source(("--model-path", str(path)), {})


class CandidateServer:
    """`mlops-serve` serving `source` with the production settings; `extra_args` come last, so they override
    them (a test's tiny queue, `--workers 2`)."""

    def __init__(self, source: Source, folder: Path, extra_args: tuple[str, ...] = ()):
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log_path = folder / "server.log"
        command = [str(Path(sys.executable).parent / "mlops-serve"), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--metrics-port", str(self.metrics_port), "--http-port", "-1"]
        command += list(source.args)
        command += ["--prediction-log-dir", str(folder / "prediction_log"), "--log-ship-to", "none"]
        command += ["--cache-dir", str(folder / "cache"), *PRODUCTION_ARGS, *extra_args]
        # The flags say what to serve and how; a run worker's own server settings must not change that.
        # MLFLOW_S3_ENDPOINT_URL and the AWS variables stay: the server downloads the version with them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_SERVE_") and k not in REGISTRY_VARIABLES}
        env.update(source.env)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready(f"http://127.0.0.1:{self.metrics_port}/ready"):
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
