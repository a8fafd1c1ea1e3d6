"""The served-traffic part of `make demo`: a real `mlops-serve` on loopback, following the demo's
registry, answers a replay of one held-out month through tritonclient, as clients would.

Each request carries its rows' keys (OIP parameter `row_key`, the flight ids) and the time it is about
(`event_time`, the flight's day), so the server's shipped prediction log lands in that month and can
be joined with the outcomes that arrive later. Bounded: a sample of the month, in small requests.
Stopping the server closes its last segment and ships it to $MLOPS_HOME/artifacts/prediction_log/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_assets.features.assets import load_features
from mlops_assets.features_spec import ROW_KEY
from mlops_assets.oip_client import free_port, infer_inputs, ready
from mlops_assets.training.onnx_export import onnx_feeds

REPLAY_MONTH = "2013-12"
REPLAY_ROWS = 3_000
ROWS_PER_REQUEST = 50
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Replay:
    month: str
    requests: int
    rows: int
    failed: int
    seconds: float
    log: Path


def start_server(home: Path, log: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`mlops-serve` on loopback; returns it and its gRPC address. By default it follows the embedded
    registry of `home` and ships its log into `home`'s artifact store, whatever the calling shell exports."""
    port, http = free_port(), free_port()
    command = [sys.executable, "-m", "serving.server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--metrics-port", str(http)]
    command += ["--http-port", "-1"]
    # Real flights miss weather readings now and then; the model imputes NaN inside its graph (training/onnx_export.py).
    command += ["--nan-policy", "allow_nan"]
    if env is None:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLOPS_SERVE_LOG_SHIP_TO")}
        env["MLOPS_HOME"] = str(home)
    with open(log, "wb") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready(f"http://127.0.0.1:{http}/ready"):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"mlops-serve did not become ready; its log: {log}")
        time.sleep(0.2)
    return server, f"127.0.0.1:{port}"


def stop_server(server: subprocess.Popen) -> int:
    """SIGTERM: the server drains, closes its prediction-log segment and ships it before it exits."""
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait(10)


def sample_month(store, month: str, rows: int, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of the month's validated flights, in flight order (so requests go day by day)."""
    frame = load_features(store, [month])
    if len(frame) > rows:
        frame = frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), rows, replace=False))]
    return frame.reset_index(drop=True)


def replay(url: str, frame: pd.DataFrame, model: str, rows_per_request: int = ROWS_PER_REQUEST) -> tuple[int, int]:
    """Send `frame` to the server, one day's flights at a time; returns (requests, failed requests)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    days = frame[ROW_KEY].str[:10]
    requests = failed = 0
    for day in days.unique():
        rows = frame[days == day]
        for start in range(0, len(rows), rows_per_request):
            chunk = rows.iloc[start : start + rows_per_request]
            parameters = {"row_key": json.dumps(chunk[ROW_KEY].tolist()), "event_time": f"{day}T12:00:00Z"}
            requests += 1
            try:
                client.infer(model, infer_inputs(onnx_feeds(chunk)), parameters=parameters, client_timeout=30)
            except InferenceServerException:
                failed += 1
    client.close()
    return requests, failed


def replay_month(home: Path, store, model: str, month: str = REPLAY_MONTH, rows: int = REPLAY_ROWS) -> Replay:
    """Serve the champion on loopback, replay a sample of `month` through it, stop it (which ships the log)."""
    log = home / "demo-serve.log"
    frame = sample_month(store, month, rows)
    started = time.perf_counter()
    server, url = start_server(home, log)
    try:
        requests, failed = replay(url, frame, model)
    finally:
        stop_server(server)
    return Replay(month, requests, len(frame), failed, time.perf_counter() - started, log)
