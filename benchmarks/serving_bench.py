"""The serving benchmark: this server against raw onnxruntime and `mlflow models serve`, side by side.

    python -m benchmarks.serving_bench            # full run (several minutes)
    python -m benchmarks.serving_bench --quick    # a short pass over every cell

One model (the flight-delay signature: 7 float + 3 string inputs, an MLP of 256-256 in the graph)
and one set of rows serve every target:

- `onnxruntime`: raw `session.run` in this process (threads for concurrency): the limit;
- `mlflow_serve`: `mlflow models serve --env-manager local -w 1` on the same model, over REST;
- `serve_batching_off`: this server without the batcher and without the optional features;
- `serve_batching_on`: the same with dynamic batching;
- `serve_all_features`: batching, NaN/Inf validation, the prediction log (every request) and a
  bearer token (metrics and signature validation are always on);
- `serve_workers_2`: batching on, two worker processes sharing the port (SO_REUSEPORT);
- `serve_rest_json` / `serve_rest_binary`: `serve_batching_on` driven over the REST binding instead of
  gRPC: KServe v2 JSON tensors (what curl sends), or tritonclient.http's default binary tensor data;
- `serve_large_batching_off` / `serve_large_batching_on`: a wider MLP (1024-1024-512, about 100 µs
  a row in onnxruntime instead of 20), where the model is a real share of a request's cost.

Each cell is concurrency 1 or 16 with 1-row or 64-row requests. The load generators are Python
processes that send pre-encoded requests over the raw protocol (HTTP/2 frames for this server's gRPC,
see benchmarks/h2load.py; HTTP/1.1 keep-alive for REST and mlflow), so the client takes little of the
machine and both protocols are driven by clients of the same cost.
Cells are interleaved across targets and repeated, and medians are reported. Server CPU per
request (from /proc, all of the server's processes) is reported too: on a shared 2-core machine it
is steadier than throughput. With `--perf-analyzer` (after benchmarks/tools/perf_analyzer.sh
setup), the gRPC targets are also measured with Triton's perf_analyzer, whose client is C++.
After the load, the resident memory of every process of every server is recorded by role (server,
worker, mirror) under `rss_mb_after_load`. Results go to benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import h2load
from benchmarks.common import ROOT, write_result

MODEL = "flight_delay"
TOKEN = "bench-token"
CONCURRENCY = (1, 16)
ROWS = (1, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (mlflow serve runs uvicorn in children, mlops-serve its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and all its descendants."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def process_rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of each process of a server, by role: the server itself, each worker, the mirror."""
    roles: dict[str, float] = {}
    for current in process_tree(pid):
        try:
            command = Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            rss_kb = next(
                int(line.split()[1])
                for line in Path(f"/proc/{current}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        except (OSError, StopIteration):
            continue
        if "serving.mirror" in command:
            role = "mirror"
        elif "resource_tracker" in command:
            role = "resource_tracker"  # multiprocessing's own helper of a --workers parent
        elif "multiprocessing" in command:
            role = "worker"
        else:
            role = "process"
        if current == pid:
            role = "server"
        name, n = role, 1
        while name in roles:
            n += 1
            name = f"{role}_{n}"
        roles[name] = round(rss_kb / 1024, 1)
    return roles


# --- requests ------------------------------------------------------------------------------------------


def grpc_payload(rows: dict[str, np.ndarray]) -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    from serving.codec import serialize_bytes

    request = pb.ModelInferRequest(model_name=MODEL)
    for name, array in rows.items():
        is_bytes = array.dtype == object
        request.inputs.add(name=name, datatype="BYTES" if is_bytes else "FP32", shape=list(array.shape))
        request.raw_input_contents.append(serialize_bytes(array) if is_bytes else array.tobytes())
    return request.SerializeToString()


def http_request(port: int, path: str, body: bytes, headers: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n{headers}\r\n"
    ).encode()
    return head + body


def mlflow_payload(rows: dict[str, np.ndarray], port: int) -> bytes:
    return http_request(port, "/invocations", json.dumps({"inputs": {k: v.tolist() for k, v in rows.items()}}).encode())


def rest_payload(rows: dict[str, np.ndarray], port: int, binary: bool) -> bytes:
    """An OIP REST infer request: JSON tensors, or tritonclient.http's default binary tensor data both ways."""
    from serving.codec import serialize_bytes

    tensors, raws = [], []
    for name, array in rows.items():
        tensor = {"name": name, "shape": list(array.shape), "datatype": "BYTES" if array.dtype == object else "FP32"}
        if binary:
            raws.append(serialize_bytes(array) if array.dtype == object else array.tobytes())
            tensor["parameters"] = {"binary_data_size": len(raws[-1])}
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    document = {"inputs": tensors, **({"parameters": {"binary_data_output": True}} if binary else {})}
    head = json.dumps(document).encode()
    extra = f"Inference-Header-Content-Length: {len(head)}\r\n" if binary else ""
    return http_request(port, f"/v2/models/{MODEL}/infer", head + b"".join(raws), extra)


# --- load generators (each runs in its own process) ------------------------------------------------------


async def _http_load(port: int, payload: bytes, concurrency: int, seconds: float):
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(payload)
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if b" 200 " not in status:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
        writer.close()

    await asyncio.gather(*[client() for _ in range(concurrency)])
    return latencies, errors


def _load_process(kind: str, args: tuple, out) -> None:
    try:
        load = h2load.load if kind == "grpc" else _http_load
        out.put(asyncio.run(load(*args)))
    except BaseException as exc:  # reported by the parent
        out.put(([], repr(exc)))


def run_load(kind: str, make_args, concurrency: int, seconds: float) -> dict:
    """Closed-loop load from 1 process (concurrency 1) or 2 processes (higher concurrency)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    processes = 1 if concurrency == 1 else 2
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    workers = [ctx.Process(target=_load_process, args=(kind, make_args(share), out)) for share in shares]
    for w in workers:
        w.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join(30)
    latencies = np.array([x for r in results for x in r[0]])
    errors = [r[1] for r in results]
    if any(isinstance(e, str) for e in errors):
        raise RuntimeError(f"load generator failed: {errors}")
    return summarize(latencies, seconds, sum(errors))


def summarize(latencies: np.ndarray, seconds: float, errors: int = 0) -> dict:
    if len(latencies) == 0:
        return {"requests_per_s": 0.0, "p50_ms": None, "p99_ms": None, "errors": errors}
    return {
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "errors": errors,
    }


# --- targets --------------------------------------------------------------------------------------------


class Target:
    name = ""
    pid: int | None = None

    def measure(self, concurrency: int, rows: int, seconds: float) -> dict:
        cpu_before = process_cpu_seconds(self.pid) if self.pid else None
        result = self._measure(concurrency, rows, seconds)
        result["rows_per_s"] = result["requests_per_s"] * rows
        if self.pid and result["requests_per_s"]:
            spent = process_cpu_seconds(self.pid) - cpu_before
            result["server_cpu_ms_per_request"] = spent * 1e3 / (result["requests_per_s"] * seconds)
        return result

    def stop(self) -> None:
        pass


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"

    def __init__(self, model_path: Path, data: dict[int, dict[str, np.ndarray]]):
        from serving.sessions import create_session, serving_options

        self.session = create_session(model_path, serving_options(model_path, intra_op_threads=1))
        self.data = data

    def _measure(self, concurrency, rows, seconds):
        feeds = self.data[rows]
        latencies: list[list[float]] = [[] for _ in range(concurrency)]
        deadline = time.perf_counter() + seconds

        def loop(slot):
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                self.session.run(["probability"], feeds)
                latencies[slot].append(time.perf_counter() - start)

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return summarize(np.array([x for per in latencies for x in per]), seconds)


class ServeTarget(Target):
    """This server, driven over gRPC, or over REST with `protocol` "rest_json" or "rest_binary"."""

    def __init__(
        self, name: str, model_path: Path, data, args: list[str], token: str | None, log_dir: Path, protocol="grpc"
    ):
        self.name = name
        self.port, self.metrics_port, self.http_port = free_port(), free_port(), free_port()
        self.token = token
        self.protocol = protocol
        if protocol == "grpc":
            self.payloads = {rows: grpc_payload(arrays) for rows, arrays in data.items()}
        else:
            binary = protocol == "rest_binary"
            self.payloads = {rows: rest_payload(arrays, self.http_port, binary) for rows, arrays in data.items()}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
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
                "--http-port",
                str(self.http_port),
                "--model-path",
                str(model_path),
                "--model-name",
                MODEL,
                "--prediction-log-dir",
                str(log_dir / name),
                # Shipping on, as by default, but never into the pipeline's own $MLOPS_HOME/artifacts.
                "--log-ship-to",
                str(log_dir / f"{name}-shipped"),
                "--log-level",
                "WARNING",
                *args,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.pid = self.process.pid
        wait_http(f"http://127.0.0.1:{self.metrics_port}/ready", 60, self.process)

    def _measure(self, concurrency, rows, seconds):
        payload = self.payloads[rows]
        if self.protocol != "grpc":
            return run_load("http", lambda share: (self.http_port, payload, share, seconds), concurrency, seconds)
        return run_load(
            "grpc", lambda share: (f"127.0.0.1:{self.port}", payload, share, seconds, self.token), concurrency, seconds
        )

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class MlflowTarget(Target):
    name = "mlflow_serve"

    def __init__(self, model_dir: Path, data):
        self.port = free_port()
        self.payloads = {rows: mlflow_payload(arrays, self.port) for rows, arrays in data.items()}
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
        self.process = subprocess.Popen(
            [
                str(bin_dir / "mlflow"),
                "models",
                "serve",
                "-m",
                str(model_dir),
                "--env-manager",
                "local",
                "-w",
                "1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.process.pid
        wait_http(f"http://127.0.0.1:{self.port}/ping", 120, self.process)

    def _measure(self, concurrency, rows, seconds):
        payload = self.payloads[rows]
        return run_load("http", lambda share: (self.port, payload, share, seconds), concurrency, seconds)

    def stop(self):
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.process.kill()


def wait_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


# --- perf_analyzer ----------------------------------------------------------------------------------------


def perf_analyzer(target: ServeTarget, concurrency: int, rows: int, seconds: float) -> dict | None:
    script = ROOT / "benchmarks" / "tools" / "perf_analyzer.sh"
    venv = Path(os.environ.get("PERF_VENV", ROOT / ".tools-venv"))
    if not (venv / "bin" / "perf_analyzer").exists():
        return None
    env = {**os.environ, "MLOPS_SERVE_URL": f"127.0.0.1:{target.port}", "PERF_VENV": str(venv)}
    if target.token:
        env["MLOPS_SERVE_TOKEN"] = target.token
    else:
        env.pop("MLOPS_SERVE_TOKEN", None)
    with tempfile.NamedTemporaryFile(suffix=".csv") as report:
        done = subprocess.run(
            [
                "bash",
                str(script),
                "run",
                "--concurrency-range",
                str(concurrency),
                "-b",
                str(rows),
                "-p",
                str(int(seconds * 1000)),
                "-s",
                "100",
                "--max-trials",
                "3",
                "-f",
                report.name,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds * 10 + 120,
        )
        if done.returncode != 0:
            return {"error": (done.stdout + done.stderr)[-400:]}
        lines = Path(report.name).read_text().splitlines()
    header, values = lines[0].split(","), lines[1].split(",")
    row = dict(zip(header, values, strict=False))
    return {
        "requests_per_s": float(row["Inferences/Second"]) / rows,
        "p50_ms": float(row["p50 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
    }


# --- main --------------------------------------------------------------------------------------------------


def build_models(folder: Path) -> tuple[Path, Path, Path]:
    """The benchmark model as an ONNX file and an MLflow model, and the wider model as an ONNX file."""
    import mlflow.onnx

    from serving import demo_models

    model = demo_models.flight_model(seed=0, hidden=(256, 256))
    path = demo_models.save(model, folder / "flight_delay.onnx")
    mlflow_dir = folder / "mlflow_model"
    mlflow.onnx.save_model(
        model, str(mlflow_dir), save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"]
    )
    large = demo_models.save(demo_models.flight_model(seed=0, hidden=(1024, 1024, 512)), folder / "large.onnx")
    return path, mlflow_dir, large


def targets_for(folder: Path, models: tuple[Path, Path, Path], data, only: set[str] | None) -> list[Target]:
    model_path, mlflow_dir, large_path = models
    log_dir = folder / "prediction_logs"
    quiet = ["--prediction-log-sample-rate", "0", "--nan-policy", "allow"]
    specs = [
        ("onnxruntime", lambda: OnnxRuntimeTarget(model_path, data)),
        ("mlflow_serve", lambda: MlflowTarget(mlflow_dir, data)),
        (
            "serve_batching_off",
            lambda: ServeTarget("serve_batching_off", model_path, data, ["--no-batching", *quiet], None, log_dir),
        ),
        (
            "serve_batching_on",
            lambda: ServeTarget("serve_batching_on", model_path, data, ["--batching", *quiet], None, log_dir),
        ),
        (
            "serve_rest_json",
            lambda: ServeTarget(
                "serve_rest_json", model_path, data, ["--batching", *quiet], None, log_dir, protocol="rest_json"
            ),
        ),
        (
            "serve_rest_binary",
            lambda: ServeTarget(
                "serve_rest_binary", model_path, data, ["--batching", *quiet], None, log_dir, protocol="rest_binary"
            ),
        ),
        (
            "serve_all_features",
            lambda: ServeTarget(
                "serve_all_features",
                model_path,
                data,
                ["--batching", "--token", TOKEN, "--nan-policy", "reject", "--prediction-log-sample-rate", "1"],
                TOKEN,
                log_dir,
            ),
        ),
        (
            "serve_workers_2",
            lambda: ServeTarget(
                "serve_workers_2", model_path, data, ["--batching", "--workers", "2", *quiet], None, log_dir
            ),
        ),
        (
            "serve_large_batching_off",
            lambda: ServeTarget("serve_large_batching_off", large_path, data, ["--no-batching", *quiet], None, log_dir),
        ),
        (
            "serve_large_batching_on",
            lambda: ServeTarget("serve_large_batching_on", large_path, data, ["--batching", *quiet], None, log_dir),
        ),
    ]
    return [make() for name, make in specs if not only or name in only]


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def rest_over_grpc(results: dict) -> dict:
    """REST (JSON and binary tensors) over gRPC on the same server configuration, per cell: throughput
    (requests and rows a second), latency and server CPU per request, each as REST / gRPC."""
    grpc = results.get("serve_batching_on", {})
    out = {}
    for target in ("serve_rest_json", "serve_rest_binary"):
        for cell, rest in results.get(target, {}).items():
            base = grpc.get(cell, {})
            out.setdefault(target, {})[cell] = {
                key: ratio(rest.get(key), base.get(key))
                for key in ("requests_per_s", "rows_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
            }
    return out


def verdicts(results: dict) -> dict:
    def rps(target, c, rows=1):
        return results.get(target, {}).get(f"c{c}_rows{rows}", {}).get("requests_per_s")

    def p99(target, c, rows=1):
        return results.get(target, {}).get(f"c{c}_rows{rows}", {}).get("p99_ms")

    out = {
        "throughput_vs_mlflow_c16": ratio(rps("serve_batching_on", 16), rps("mlflow_serve", 16)),
        "p99_ms_c16_batching_on": p99("serve_batching_on", 16),
        "batching_on_over_off_c16": ratio(rps("serve_batching_on", 16), rps("serve_batching_off", 16)),
        "batching_on_over_off_c1": ratio(rps("serve_batching_on", 1), rps("serve_batching_off", 1)),
        "all_features_over_batching_on_c16": ratio(rps("serve_all_features", 16), rps("serve_batching_on", 16)),
        "batching_on_over_off_c16_rows64": ratio(rps("serve_batching_on", 16, 64), rps("serve_batching_off", 16, 64)),
        "workers_2_over_1_c16": ratio(rps("serve_workers_2", 16), rps("serve_batching_on", 16)),
        "workers_2_vs_mlflow_c16": ratio(rps("serve_workers_2", 16), rps("mlflow_serve", 16)),
        "large_model_batching_on_over_off_c16": ratio(
            rps("serve_large_batching_on", 16), rps("serve_large_batching_off", 16)
        ),
        "large_model_batching_on_over_off_c1": ratio(
            rps("serve_large_batching_on", 1), rps("serve_large_batching_off", 1)
        ),
    }
    out["rest_over_grpc"] = rest_over_grpc(results)
    out["targets"] = {
        "at_least_4x_mlflow_c16": (out["throughput_vs_mlflow_c16"] or 0) >= 4,
        "p99_under_10ms_c16": (out["p99_ms_c16_batching_on"] or 1e9) < 10,
        "batching_at_least_1.1x_c16": (out["batching_on_over_off_c16"] or 0) >= 1.1,
        "batching_at_most_10pct_slower_c1": (out["batching_on_over_off_c1"] or 0) >= 0.9,
        "all_features_at_least_70pct": (out["all_features_over_batching_on_c16"] or 0) >= 0.7,
    }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per cell, one round")
    parser.add_argument("--seconds", type=float, help="seconds per cell (default 5, quick 2)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds; medians reported (default 3, quick 1)")
    parser.add_argument("--targets", help="comma-separated subset of targets")
    parser.add_argument(
        "--perf-analyzer",
        action="store_true",
        help="also measure the gRPC targets with perf_analyzer (tools venv must exist)",
    )
    parser.add_argument("--output", default="serving", help="result name under benchmarks/results/")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    rounds = args.rounds or (1 if args.quick else 3)
    only = set(args.targets.split(",")) if args.targets else None

    folder = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from serving import demo_models

    models = build_models(folder)
    data = {rows: demo_models.flight_rows(rows, seed=rows) for rows in ROWS}
    targets = targets_for(folder, models, data, only)
    samples: dict[str, dict[str, list[dict]]] = {t.name: {} for t in targets}
    try:
        for target in targets:  # warm every path once before measuring
            target.measure(1, 1, 0.5)
        for round_ in range(rounds):
            for concurrency in CONCURRENCY:
                for rows in ROWS:
                    for target in targets:
                        cell = f"c{concurrency}_rows{rows}"
                        result = target.measure(concurrency, rows, seconds)
                        samples[target.name].setdefault(cell, []).append(result)
                        print(
                            f"round {round_ + 1} {target.name:20s} {cell:11s} "
                            f"{result['requests_per_s']:9.0f} req/s  p99 {result['p99_ms'] or 0:7.2f} ms"
                            f"  errors {result['errors']}",
                            flush=True,
                        )
        # After the load: what each process of each server holds (a worker must stay lean).
        rss = {t.name: process_rss_mb(t.pid) for t in targets if t.pid}
        perf = {}
        if args.perf_analyzer:
            for target in targets:
                if isinstance(target, ServeTarget) and target.protocol == "grpc":
                    perf[target.name] = {
                        f"c{c}_rows{r}": perf_analyzer(target, c, r, seconds) for c in CONCURRENCY for r in ROWS
                    }
    finally:
        for target in targets:
            target.stop()
        shutil.rmtree(folder, ignore_errors=True)

    results = {}
    for name, cells in samples.items():
        results[name] = {}
        for cell, runs in cells.items():
            median = {}
            for key in runs[0]:
                values = [r[key] for r in runs if r.get(key) is not None]
                median[key] = float(np.median(values)) if values else None
            median["rounds"] = len(runs)
            results[name][cell] = median
    payload = {
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "model": "flight_delay signature (7 FP32 + 3 BYTES inputs), MLP 256-256 in the graph; "
        "serve_large_*: MLP 1024-1024-512",
        "seconds_per_cell": seconds,
        "rounds": rounds,
        "load_generator": "Python processes with pre-encoded requests (raw HTTP/2 frames / raw HTTP/1.1 keep-alive), "
        "1 process at concurrency 1, 2 at 16, on the same machine as the servers",
        "server_cpu_ms_per_request": "utime+stime of the server's processes over the cell / requests served",
        "results": results,
        "summary": verdicts(results),
        "rss_mb_after_load": rss,
    }
    if args.perf_analyzer:
        payload["perf_analyzer"] = perf
        # The same servers driven by a C++ client, against mlflow driven by the (cheap) raw HTTP client.
        mlflow_c16 = results.get("mlflow_serve", {}).get("c16_rows1", {}).get("requests_per_s")
        payload["summary"]["perf_analyzer_vs_mlflow_c16"] = {
            name: ratio((cells.get("c16_rows1") or {}).get("requests_per_s"), mlflow_c16)
            for name, cells in perf.items()
        }
    write_result(args.output, payload)
    print(json.dumps(payload["summary"], indent=2))


if __name__ == "__main__":
    main()
