"""Helpers for the serving tests: servers on free loopback ports (in a thread or as a process),
tritonclient inputs, and onnxruntime references. Imported as `tests.serving.support`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from serving.sessions import create_session, serving_options
from serving.settings import ServeSettings
from serving.side_port import start_worker_http
from serving.worker import Worker

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "flight_delay"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def infer_inputs(arrays: dict[str, np.ndarray], datatypes: dict[str, str] | None = None):
    """tritonclient InferInputs for `arrays` (object arrays travel as BYTES)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in arrays.items():
        datatype = (datatypes or {}).get(name) or (
            "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
        )
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def served_session(path):
    """A session under the options the server opens `path` with (its default of one intra-op thread)."""
    return create_session(path, serving_options(path, intra_op_threads=1))


def local_predict(path, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    return served_session(path).run(None, arrays)


class RunningServer:
    """A Worker serving on a loopback port from a background thread of the test process."""

    def __init__(self, config: ServeSettings):
        self.config = config
        self.worker = Worker(config)
        self.httpd = None
        started = threading.Event()
        self.error: BaseException | None = None

        def on_started(worker):
            if config.metrics_port >= 0:
                self.httpd = start_worker_http(worker, "127.0.0.1", config.metrics_port)
            started.set()

        def target():
            try:
                asyncio.run(self.worker.run(on_started))
            except BaseException as exc:  # surfaced by the fixture
                self.error = exc
                started.set()

        self.thread = threading.Thread(target=target, name="test-server", daemon=True)
        self.thread.start()
        started.wait(60)
        if self.error is not None:
            raise self.error
        self.port = self.worker.port
        self.url = f"127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{config.metrics_port}"

    def client(self, **kwargs):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url, **kwargs)

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_until(self.worker.is_ready, timeout, what="server ready")

    def stop(self) -> None:
        if self.thread.is_alive():
            self.worker.request_stop()
            self.thread.join(60)
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd = None


class ServerProcess:
    """`mlops-serve` as a real subprocess (for signals and worker processes)."""

    def __init__(self, args: list[str], env: dict | None = None, log_path: Path | None = None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.rest_port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.metrics_port}"
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving.server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--metrics-port",
                str(self.metrics_port),
                # REST on a free port and the log kept local unless `args` say otherwise (the last flag wins).
                "--http-port",
                str(self.rest_port),
                "--log-ship-to",
                "none",
                *args,
            ],
            env=full_env,
            cwd=str(REPO_ROOT),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}: {self.logs()[-2000:]}")
            try:
                return http_get(self.http + "/ready")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, interval=0.1, what="server process ready")

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def terminate(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self._log is not subprocess.DEVNULL:
                self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def loopback_settings(folder: Path, **overrides) -> ServeSettings:
    """A server of MODEL on free loopback ports, its prediction log in `folder` and kept there, REST off
    unless `http_port` says otherwise; `overrides` are the test's own settings."""
    values = dict(
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
        http_port=-1,
        model_name=MODEL,
        prediction_log_dir=str(Path(folder) / "prediction_log"),
        log_ship_to="none",
    )
    return ServeSettings(**{**values, **overrides})


@contextlib.contextmanager
def running(settings: ServeSettings) -> Iterator[RunningServer]:
    """A `RunningServer`, ready, stopped afterwards."""
    server = RunningServer(settings)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def one_model_process(model_path, folder: Path, *args: str) -> Iterator[ServerProcess]:
    """`mlops-serve --model-path` as a ready subprocess logging to `folder/server.log`, with a short grace
    period and `args` added; SIGTERM (then SIGKILL) afterwards."""
    process = ServerProcess(
        [
            "--model-path",
            str(model_path),
            "--model-name",
            MODEL,
            "--prediction-log-dir",
            str(folder / "prediction_log"),
            "--grace-period",
            "2",
            *args,
        ],
        env={"MLOPS_HOME": str(folder / "home")},
        log_path=folder / "server.log",
    )
    try:
        process.wait_ready()
        yield process
    finally:
        try:
            process.terminate(timeout=30)
        finally:
            process.kill()
