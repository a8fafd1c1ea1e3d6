"""Wiring: configuration, the gRPC server, the HTTP side port, worker processes, graceful stop.

`mlops-serve` (this module's `main`) serves a registered MLflow model by name and alias, or one
ONNX file with `--model-path`, over the Open Inference Protocol on gRPC (8001) and HTTP/REST (8000,
serving.rest), Triton's port layout. Every flag has an environment variable fallback (see `build_parser`).
With `--workers N > 1` the parent starts N worker processes that share the gRPC and REST ports
through SO_REUSEPORT, serves the HTTP side port itself (summing the workers' metrics) and forwards
SIGTERM to them.

A graceful stop (SIGTERM or SIGINT): health goes NOT_SERVING and /ready 503, new inference
requests get UNAVAILABLE while the ones in flight finish (up to the grace period), then gRPC stops,
the batchers drain, and the prediction log writes everything buffered, closes its segment and ships
it to the artifact store (`--log-ship-to`), within what is left of grace period + HARD_STOP_MARGIN_S.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("serving.server")

HEARTBEAT_S = 0.2
# A stop always ends within grace period + this margin, whatever the workers are doing; deploy/ allows for it.
HARD_STOP_MARGIN_S = 5.0
# On a graceful stop the prediction log's last upload gets up to this long, within that hard deadline.
LOG_CLOSE_TIMEOUT_S = 10.0
STOP_SLACK_S = 0.5  # what the rest of a stop needs after the log closes


def _mlops_home() -> Path:
    return Path(os.environ.get("MLOPS_HOME", "./.mlops"))


@dataclass
class ServeConfig:
    host: str = "0.0.0.0"
    port: int = 8001
    metrics_port: int = 8002  # -1 turns the HTTP side port off
    http_port: int = 8000  # the REST binding (-1 turns it off), Triton's port
    tracking_uri: str | None = None
    registry_uri: str | None = None
    model_name: str = "flight_delay"
    aliases: list[str] = field(default_factory=lambda: ["champion"])
    model_path: str | None = None
    model_version: str = "1"
    poll_interval: float = 10.0
    registry_backoff_initial: float = 1.0  # seconds before retrying a failed registry call or download
    registry_backoff_max: float = 60.0
    require_approval: bool = False  # serve only versions tagged promotion_decision=approved
    manifest_path: str | None = None  # the registry mirror's manifest, set by the parent for its workers
    cache_dir: str | None = None
    batching: bool = True
    max_batch_size: int = 256
    max_queue_delay_us: int = 500
    queue_capacity: int = 1024
    workers: int = 1
    intra_op_threads: int = 1
    nan_policy: str = "reject"
    token: str | None = None
    admin_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    prediction_log_dir: str | None = None
    prediction_log_sample_rate: float = 1.0
    prediction_log_max_bytes: int = 64 * 1024 * 1024
    prediction_log_max_age_s: float = 300.0
    prediction_log_max_total_bytes: int = 1024**3
    log_ship_to: str | None = None  # where closed segments ship; None: $MLOPS_HOME/artifacts, "none": stay local
    grace_period: float = 30.0
    stall_timeout: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 256
    max_queued_bytes: int = 64 * 1024 * 1024
    log_level: str = "INFO"
    metrics_dir: str | None = None  # set by the parent for its workers


def _env(name: str, default, cast=str):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if cast is bool:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return cast(value)


def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(
        prog="mlops-serve",
        description="Serve a registered ONNX model over the Open Inference Protocol (KServe v2) on gRPC and REST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--host", default=_env("MLOPS_SERVE_HOST", d.host), help="gRPC bind address [MLOPS_SERVE_HOST]")
    a("--port", type=int, default=_env("MLOPS_SERVE_PORT", d.port, int), help="gRPC port [MLOPS_SERVE_PORT]")
    a(
        "--metrics-port",
        type=int,
        default=_env("MLOPS_SERVE_METRICS_PORT", d.metrics_port, int),
        help="HTTP port for /health, /ready, /metrics; -1 turns it off [MLOPS_SERVE_METRICS_PORT]",
    )
    a(
        "--http-port",
        type=int,
        default=_env("MLOPS_SERVE_HTTP_PORT", d.http_port, int),
        help="port of the Open Inference Protocol over HTTP/REST (/v2/...), behind the same token as gRPC; "
        "-1 turns it off [MLOPS_SERVE_HTTP_PORT]",
    )
    a(
        "--tracking-uri",
        default=_env("MLFLOW_TRACKING_URI", None),
        help="MLflow tracking URI; default the pipeline's local store, sqlite:///$MLOPS_HOME/mlflow.db "
        "[MLFLOW_TRACKING_URI]",
    )
    a(
        "--registry-uri",
        default=_env("MLFLOW_REGISTRY_URI", None),
        help="MLflow registry URI, if not the tracking URI [MLFLOW_REGISTRY_URI]",
    )
    a("--model-name", default=_env("MLOPS_MODEL_NAME", d.model_name), help="registered model name [MLOPS_MODEL_NAME]")
    a(
        "--aliases",
        default=_env("MLOPS_SERVE_ALIASES", ",".join(d.aliases)),
        help="comma-separated aliases to serve; the first is the default version [MLOPS_SERVE_ALIASES]",
    )
    a(
        "--model-path",
        default=_env("MLOPS_SERVE_MODEL_PATH", None),
        help="serve this ONNX file instead of following the registry [MLOPS_SERVE_MODEL_PATH]",
    )
    a(
        "--model-version",
        default=_env("MLOPS_SERVE_MODEL_VERSION", d.model_version),
        help="version label of --model-path [MLOPS_SERVE_MODEL_VERSION]",
    )
    a(
        "--poll-interval",
        type=float,
        default=_env("MLOPS_SERVE_POLL_INTERVAL", d.poll_interval, float),
        help="seconds between registry polls [MLOPS_SERVE_POLL_INTERVAL]",
    )
    a(
        "--registry-backoff-initial",
        type=float,
        default=_env("MLOPS_SERVE_REGISTRY_BACKOFF_INITIAL", d.registry_backoff_initial, float),
        help="seconds before the first retry of a failed registry call or download; doubles on each failure "
        "[MLOPS_SERVE_REGISTRY_BACKOFF_INITIAL]",
    )
    a(
        "--registry-backoff-max",
        type=float,
        default=_env("MLOPS_SERVE_REGISTRY_BACKOFF_MAX", d.registry_backoff_max, float),
        help="longest wait between retries [MLOPS_SERVE_REGISTRY_BACKOFF_MAX]",
    )
    a(
        "--require-approval",
        action=argparse.BooleanOptionalAction,
        default=_env("MLOPS_SERVE_REQUIRE_APPROVAL", d.require_approval, bool),
        help="serve only versions whose tag promotion_decision is 'approved' [MLOPS_SERVE_REQUIRE_APPROVAL=1|0]",
    )
    a(
        "--cache-dir",
        default=_env("MLOPS_SERVE_CACHE_DIR", None),
        help="where downloaded versions are kept; default $MLOPS_HOME/serving_cache [MLOPS_SERVE_CACHE_DIR]",
    )
    a(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=_env("MLOPS_SERVE_BATCHING", d.batching, bool),
        help="dynamic batching [MLOPS_SERVE_BATCHING=1|0]",
    )
    a(
        "--max-batch-size",
        type=int,
        default=_env("MLOPS_SERVE_MAX_BATCH_SIZE", d.max_batch_size, int),
        help="most rows per request and per batch [MLOPS_SERVE_MAX_BATCH_SIZE]",
    )
    a(
        "--max-queue-delay-us",
        type=int,
        default=_env("MLOPS_SERVE_MAX_QUEUE_DELAY_US", d.max_queue_delay_us, int),
        help="longest a batch waits for more rows, only while more are expected [MLOPS_SERVE_MAX_QUEUE_DELAY_US]",
    )
    a(
        "--queue-capacity",
        type=int,
        default=_env("MLOPS_SERVE_QUEUE_CAPACITY", d.queue_capacity, int),
        help="requests queued per model version before RESOURCE_EXHAUSTED [MLOPS_SERVE_QUEUE_CAPACITY]",
    )
    a(
        "--workers",
        type=int,
        default=_env("MLOPS_SERVE_WORKERS", d.workers, int),
        help="worker processes sharing the gRPC and REST ports (SO_REUSEPORT) [MLOPS_SERVE_WORKERS]",
    )
    a(
        "--intra-op-threads",
        type=int,
        default=_env("MLOPS_SERVE_INTRA_OP_THREADS", d.intra_op_threads, int),
        help="ONNX Runtime threads per model run [MLOPS_SERVE_INTRA_OP_THREADS]",
    )
    a(
        "--nan-policy",
        choices=["reject", "allow_nan", "allow"],
        default=_env("MLOPS_SERVE_NAN_POLICY", d.nan_policy),
        help="float inputs with NaN/Inf: reject both, allow NaN only, or allow both [MLOPS_SERVE_NAN_POLICY]",
    )
    a(
        "--token",
        default=_env("MLOPS_SERVE_TOKEN", None),
        help="require 'authorization: Bearer <token>' metadata [MLOPS_SERVE_TOKEN]",
    )
    a(
        "--admin-token",
        default=_env("MLOPS_SERVE_ADMIN_TOKEN", None),
        help="bearer token of the control plane (RepositoryIndex, ModelLoad, ModelUnload), off without it "
        "[MLOPS_SERVE_ADMIN_TOKEN]",
    )
    a("--tls-cert", default=_env("MLOPS_SERVE_TLS_CERT", None), help="PEM certificate for TLS [MLOPS_SERVE_TLS_CERT]")
    a("--tls-key", default=_env("MLOPS_SERVE_TLS_KEY", None), help="PEM private key for TLS [MLOPS_SERVE_TLS_KEY]")
    a(
        "--prediction-log-dir",
        default=_env("MLOPS_PREDICTION_LOG_DIR", None),
        help="prediction log folder; default $MLOPS_HOME/prediction_log [MLOPS_PREDICTION_LOG_DIR]",
    )
    a(
        "--prediction-log-sample-rate",
        type=float,
        default=_env("MLOPS_PREDICTION_LOG_SAMPLE_RATE", d.prediction_log_sample_rate, float),
        help="share of requests logged, 0 turns the log off [MLOPS_PREDICTION_LOG_SAMPLE_RATE]",
    )
    a(
        "--prediction-log-max-bytes",
        type=int,
        default=_env("MLOPS_PREDICTION_LOG_MAX_BYTES", d.prediction_log_max_bytes, int),
        help="rotate a segment past this size [MLOPS_PREDICTION_LOG_MAX_BYTES]",
    )
    a(
        "--prediction-log-max-age-s",
        type=float,
        default=_env("MLOPS_PREDICTION_LOG_MAX_AGE_S", d.prediction_log_max_age_s, float),
        help="rotate a segment past this age [MLOPS_PREDICTION_LOG_MAX_AGE_S]",
    )
    a(
        "--prediction-log-max-total-bytes",
        type=int,
        default=_env("MLOPS_PREDICTION_LOG_MAX_TOTAL_BYTES", d.prediction_log_max_total_bytes, int),
        help="delete the oldest closed segments past this total; 0 keeps all [MLOPS_PREDICTION_LOG_MAX_TOTAL_BYTES]",
    )
    a(
        "--log-ship-to",
        default=_env("MLOPS_SERVE_LOG_SHIP_TO", None),
        help="where closed prediction log segments ship (prediction_log/yyyy/mm/dd/...): a folder, file://... or "
        "s3://bucket/prefix; default $MLOPS_HOME/artifacts, the pipeline's local artifact store; 'none' keeps "
        "them here [MLOPS_SERVE_LOG_SHIP_TO]",
    )
    a(
        "--stall-timeout",
        type=float,
        default=_env("MLOPS_SERVE_STALL_TIMEOUT", d.stall_timeout, float),
        help="seconds without progress (event loop or a batch) before /health fails and a worker is restarted "
        "[MLOPS_SERVE_STALL_TIMEOUT]",
    )
    a(
        "--max-message-bytes",
        type=int,
        default=_env("MLOPS_SERVE_MAX_MESSAGE_BYTES", d.max_message_bytes, int),
        help="largest gRPC message received or sent [MLOPS_SERVE_MAX_MESSAGE_BYTES]",
    )
    a(
        "--max-concurrent-rpcs",
        type=int,
        default=_env("MLOPS_SERVE_MAX_CONCURRENT_RPCS", d.max_concurrent_rpcs, int),
        help="RPCs handled at once per worker; more get RESOURCE_EXHAUSTED [MLOPS_SERVE_MAX_CONCURRENT_RPCS]",
    )
    a(
        "--max-queued-bytes",
        type=int,
        default=_env("MLOPS_SERVE_MAX_QUEUED_BYTES", d.max_queued_bytes, int),
        help="request data queued for batching per worker; more gets RESOURCE_EXHAUSTED [MLOPS_SERVE_MAX_QUEUED_BYTES]",
    )
    a(
        "--grace-period",
        type=float,
        default=_env("MLOPS_SERVE_GRACE_PERIOD", d.grace_period, float),
        help="seconds in-flight requests get to finish on SIGTERM [MLOPS_SERVE_GRACE_PERIOD]",
    )
    a("--log-level", default=_env("MLOPS_SERVE_LOG_LEVEL", d.log_level), help="[MLOPS_SERVE_LOG_LEVEL]")
    return p


def parse_config(argv: list[str] | None = None) -> ServeConfig:
    args = build_parser().parse_args(argv)
    values = vars(args)
    values["aliases"] = [a.strip() for a in values["aliases"].split(",") if a.strip()]
    config = ServeConfig(**values)
    if not config.aliases:
        raise SystemExit("mlops-serve: --aliases needs at least one alias")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise SystemExit("mlops-serve: --tls-cert and --tls-key go together")
    if config.workers > 1 and (config.port == 0 or config.http_port == 0):
        raise SystemExit("mlops-serve: --workers > 1 needs a fixed --port and --http-port (the workers share them)")
    if not config.model_path and not config.tracking_uri:
        # The pipeline's embedded default (resources.settings): MLflow on SQLite in $MLOPS_HOME.
        config.tracking_uri = f"sqlite:///{_mlops_home().resolve() / 'mlflow.db'}"
    return config


def ship_destination(value: str | None) -> str | None:
    """The URI closed prediction log segments ship to: by default the embedded pipeline's artifact store,
    which reads them from there (resources/served_predictions.py); None for 'none'."""
    if value is None:
        return str(_mlops_home() / "artifacts")
    return None if value.strip().lower() == "none" else value


# --- one worker -----------------------------------------------------------------------------------


class Worker:
    """One gRPC server process's worth of serving: repository, followers, server, log."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.port: int | None = None
        self.http_port: int | None = None  # the REST binding's, once it listens
        # Called on every heartbeat with (ready, healthy): a worker process reports to its parent.
        self.on_beat: Callable[[bool, bool], None] | None = None
        self.beat = time.monotonic()  # last turn of the event loop's heartbeat
        self.stall_reasons: list[str] = []
        self.state = None
        self._stop_requested = False
        self._stop_requested_at: float | None = None  # monotonic; the stop's hard deadline counts from it
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopped = threading.Event()

    async def run(self, started: Callable[[Worker], None] | None = None) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_health.v1._async import HealthServicer
        from grpc_reflection.v1alpha import reflection
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        from serving.dataplane import DataPlane, ServerState
        from serving.errors import ServerNotReady
        from serving.interceptors import ServingInterceptor
        from serving.metrics import ServerStats, SnapshotPublisher
        from serving.prediction_log import PredictionLog
        from serving.registry import RegistryFollower, open_source
        from serving.repository import ModelRepository, RepositoryConfig
        from serving.servicer import InferenceServicer

        cfg = self.config
        self._loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        stats = ServerStats()
        self.stats = stats
        repository = ModelRepository(
            RepositoryConfig(
                max_batch_size=cfg.max_batch_size,
                max_queue_delay_us=cfg.max_queue_delay_us,
                queue_capacity=cfg.queue_capacity,
                max_queued_bytes=cfg.max_queued_bytes,
                batching=cfg.batching,
                intra_op_threads=cfg.intra_op_threads,
                nan_policy=cfg.nan_policy,
                default_alias=cfg.aliases[0],
            ),
            stats,
        )
        self.repository = repository
        state = ServerState()
        self.state = state
        prediction_log = shipping_to = None
        if cfg.prediction_log_sample_rate > 0:
            prediction_log = PredictionLog(
                cfg.prediction_log_dir,
                sample_rate=cfg.prediction_log_sample_rate,
                max_bytes=cfg.prediction_log_max_bytes,
                max_age_s=cfg.prediction_log_max_age_s,
                max_total_bytes=cfg.prediction_log_max_total_bytes,
                stats=stats,
                ship_to=ship_destination(cfg.log_ship_to),
            )
            shipper = prediction_log.shipper
            if shipper is not None:
                stats.log_pending = lambda: shipper.pending
                shipping_to = str(shipper.destination)
        # --- registry source (owned by serving.registry) ---
        source = open_source(cfg)
        stats.registry = source.status
        aliases = [cfg.aliases[0]] if cfg.model_path else cfg.aliases
        follower = RegistryFollower(repository, loop, source, cfg.model_name, aliases)
        # --- end registry source ---

        options = [
            ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
        ]
        server = grpc.aio.server(
            interceptors=[ServingInterceptor(cfg.token, cfg.admin_token)],
            options=options,
            # Memory held by requests is at most this many messages of max_message_bytes.
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs or None,
        )
        plane = DataPlane(repository, stats, prediction_log, state)
        servicer = InferenceServicer(plane, {cfg.model_name: follower})
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        service_name = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

        class LiveHealth(HealthServicer):
            """Check answers from the live readiness, so it never lags /ready; Watch follows it."""

            async def Check(self, request, context):  # noqa: N802 - gRPC method name
                if request.service in ("", service_name):
                    ready = state.accepting and repository.is_ready()
                    return health_pb2.HealthCheckResponse(
                        status=health_pb2.HealthCheckResponse.SERVING
                        if ready
                        else health_pb2.HealthCheckResponse.NOT_SERVING
                    )
                return await super().Check(request, context)

        health = LiveHealth()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            [service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())]
            )
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot bind the gRPC port {address}")
        rest = None
        if cfg.http_port >= 0:
            from serving.rest import start_rest

            rest = await start_rest(plane, cfg)
            self.http_port = rest.addresses[0][1]
        await server.start()
        follower.start()
        publisher = None
        if cfg.metrics_dir:
            publisher = SnapshotPublisher(stats, Path(cfg.metrics_dir))
            publisher.start()
        log.info(
            "gRPC server started",
            extra={
                "address": address,
                "port": self.port,
                "http_port": self.http_port,
                "log_ship_to": shipping_to,
                "tls": bool(cfg.tls_cert),
                "auth": bool(cfg.token),
                "batching": cfg.batching,
                "pid": os.getpid(),
                "source": source.describe(),
            },
        )
        if not cfg.token:
            log.warning(
                "NO INFERENCE TOKEN: any client that reaches this port can call the model; "
                "set --token / MLOPS_SERVE_TOKEN outside a laptop",
                extra={"address": address},
            )
        if started is not None:
            started(self)

        async def heartbeat():
            # The beat proves the loop turns; the stall check proves every batcher makes progress.
            serving = None
            while True:
                self.beat = time.monotonic()
                self.stall_reasons = repository.stalled(cfg.stall_timeout)
                healthy = not self.stall_reasons
                ready = state.accepting and repository.is_ready() and healthy
                if ready != serving:
                    status = (
                        health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
                    )
                    await health.set("", status)
                    await health.set(service_name, status)
                    if not healthy:
                        log.error("worker stalled", extra={"reasons": self.stall_reasons, "pid": os.getpid()})
                    serving = ready
                if self.on_beat is not None:
                    self.on_beat(ready, healthy)
                await asyncio.sleep(HEARTBEAT_S)

        watcher = loop.create_task(heartbeat())
        try:
            await self._stop.wait()
        finally:
            log.info("graceful stop: draining", extra={"pid": os.getpid()})
            state.accepting = False
            if self.on_beat is not None:
                self.on_beat(False, True)
            await health.enter_graceful_shutdown()
            follower.stop()
            # Requests already inside finish while new ones get UNAVAILABLE (REST: 503) from the data
            # plane; only then does gRPC stop, whose own refusals can read CANCELLED to a client.
            deadline = loop.time() + cfg.grace_period
            while stats.in_flight() and loop.time() < deadline:
                await asyncio.sleep(0.01)
            unanswered = stats.in_flight()
            if unanswered:
                # Out of time: what is still queued or computing is answered UNAVAILABLE, and the
                # handlers get a moment to send that before gRPC stops.
                repository.abort(ServerNotReady("server is shutting down"))
                settle = loop.time() + 1.0
                while stats.in_flight() and loop.time() < settle:
                    await asyncio.sleep(0.01)
                log.warning("grace period over: answered UNAVAILABLE", extra={"requests": unanswered})
            await server.stop(max(0.2, deadline - loop.time()))
            if rest is not None:
                await rest.cleanup()
            watcher.cancel()
            source.close()  # registry source (owned by serving.registry)
            await repository.close(timeout=1.0)
            flushed = True
            if prediction_log is not None:
                flushed = await loop.run_in_executor(None, prediction_log.close, self._log_close_timeout())
            if publisher is not None:
                publisher.stop()
            log.info(
                "stopped",
                extra={
                    "pid": os.getpid(),
                    "prediction_log_written": prediction_log.written if prediction_log else 0,
                    "prediction_log_flushed": flushed,
                },
            )
            self.stopped.set()

    def _log_close_timeout(self) -> float:
        """Up to LOG_CLOSE_TIMEOUT_S for the log's last write and upload, ending before the stop's hard deadline
        (`_guard_stop`): after a full grace period that leaves about HARD_STOP_MARGIN_S, and what does not ship
        in time waits in the folder for the next start."""
        requested = self._stop_requested_at or time.monotonic()
        left = requested + self.config.grace_period + HARD_STOP_MARGIN_S - STOP_SLACK_S - time.monotonic()
        return max(STOP_SLACK_S, min(LOG_CLOSE_TIMEOUT_S, left))

    def request_stop(self) -> None:
        """Start a graceful stop; safe from any thread, also before the loop runs."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._stop_requested = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def health(self) -> tuple[bool, str]:
        """Liveness, from any thread: fails when the event loop stopped beating or a batcher stalled."""
        age = time.monotonic() - self.beat
        if age > self.config.stall_timeout:
            return False, f"event loop stalled for {age:.1f}s"
        if self.stall_reasons:
            return False, "; ".join(self.stall_reasons)
        return True, "ok"

    def is_ready(self) -> bool:
        return self.state is not None and self.state.accepting and self.repository.is_ready() and self.health()[0]

    def supervisor_view(self) -> dict:
        return {
            "workers": [
                {
                    "index": 0,
                    "pid": os.getpid(),
                    "ready": self.is_ready(),
                    "heartbeat_age_s": time.monotonic() - self.beat,
                }
            ],
            "restarts": {},
        }


# --- HTTP side port ---------------------------------------------------------------------------------


def start_http(
    host: str,
    port: int,
    live: Callable[[], tuple[bool, str]],
    ready: Callable[[], bool],
    snapshot: Callable[[], dict],
    supervisor: Callable[[], dict],
) -> ThreadingHTTPServer:
    """Serve /health (live), /ready and /metrics on a daemon thread; never behind the token.

    It runs on its own thread so that it still answers, truthfully, when the event loop is wedged."""
    from serving.exposition import render

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/health":
                ok, reason = live()
                self._reply(200 if ok else 503, f"{reason}\n".encode(), "text/plain")
            elif path == "/ready":
                ok = ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
            elif path == "/metrics":
                self._reply(200, render(snapshot(), supervisor()), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes and probes stay out of the log
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="http-side-port", daemon=True).start()
    return httpd


def start_worker_http(worker: Worker, host: str, port: int) -> ThreadingHTTPServer:
    return start_http(host, port, worker.health, worker.is_ready, worker.stats.snapshot, worker.supervisor_view)


# --- processes ---------------------------------------------------------------------------------------


def _guard_stop(worker: Worker, signals: set[signal.Signals]) -> None:
    """Take `signals` on a thread of our own and bound the stop they start.

    The signals are blocked in every thread (call this before any thread starts; they all inherit
    the mask) and waited for here, so a stop starts even when the event loop is wedged, and the
    process exits at grace period + margin whatever it is doing then."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    def wait() -> None:
        received = signal.sigwait(signals)
        log.info("stop requested", extra={"signal": signal.Signals(received).name, "pid": os.getpid()})
        worker.request_stop()
        time.sleep(worker.config.grace_period + HARD_STOP_MARGIN_S)
        log.error("did not stop within the grace period; exiting now", extra={"pid": os.getpid()})
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    threading.Thread(target=wait, name="stop-guard", daemon=True).start()


def _run_event_loop(coroutine) -> None:
    # uvloop: about 5% less server CPU per request than asyncio's own loop under gRPC load.
    import uvloop

    uvloop.run(coroutine)


def run_single(config: ServeConfig) -> int:
    from serving import logs

    logs.configure(config.log_level)
    worker = Worker(config)
    _guard_stop(worker, {signal.SIGTERM, signal.SIGINT})
    httpd = None

    def started(w: Worker) -> None:
        nonlocal httpd
        if config.metrics_port >= 0:
            httpd = start_worker_http(w, config.host, config.metrics_port)

    try:
        _run_event_loop(worker.run(started))
    finally:
        if httpd is not None:
            httpd.shutdown()
    return 0


# Worker states the parent reads from shared memory.
NOT_READY, READY, STALLED = 0, 1, 2


def _worker_main(config_dict: dict, index: int, states, beats) -> None:
    from serving import logs

    config = ServeConfig(**config_dict)
    logs.configure(config.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    worker = Worker(config)
    _guard_stop(worker, {signal.SIGTERM})

    def report(ready: bool, healthy: bool) -> None:
        states[index] = READY if ready else (NOT_READY if healthy else STALLED)
        beats[index] = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host

    worker.on_beat = report
    _run_event_loop(worker.run())


def run_workers(config: ServeConfig) -> int:
    from serving import logs
    from serving.metrics import merge_snapshots, read_snapshots
    from serving.mirror import MirrorProcess  # registry mirror

    logs.configure(config.log_level)
    metrics_dir = Path(tempfile.mkdtemp(prefix="mlops-serve-metrics-"))
    child_config = asdict(config)
    child_config["metrics_dir"] = str(metrics_dir)
    mirror = None if config.model_path else MirrorProcess.for_server(config)  # registry mirror
    child_config["manifest_path"] = mirror.manifest if mirror else None  # registry mirror
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
    if mirror is not None:  # registry mirror
        mirror.stop()  # registry mirror
    if httpd is not None:
        httpd.shutdown()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    if config.workers > 1:
        return run_workers(config)
    return run_single(config)


if __name__ == "__main__":
    sys.exit(main())
