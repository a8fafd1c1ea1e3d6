"""One worker: the repository, the alias follower, the gRPC and REST servers and the prediction log
of one process, its heartbeat, and its graceful stop.

A graceful stop (SIGTERM or SIGINT): health goes NOT_SERVING and /ready 503, new inference
requests get UNAVAILABLE while the ones in flight finish (up to the grace period), then gRPC stops,
the batchers drain, and the prediction log writes everything buffered, closes its segment and ships
it to the artifact store (`--log-ship-to`), within what is left of grace period + HARD_STOP_MARGIN_S.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving.settings import ServeSettings, ship_destination

log = logging.getLogger("serving.worker")

HEARTBEAT_S = 0.2
# A stop always ends within grace period + this margin, whatever the workers are doing; deploy/ allows for it.
HARD_STOP_MARGIN_S = 5.0
# On a graceful stop the prediction log's last upload gets up to this long, within that hard deadline.
LOG_CLOSE_TIMEOUT_S = 10.0
STOP_SLACK_S = 0.5  # what the rest of a stop needs after the log closes


class Worker:
    """One gRPC server process's worth of serving: repository, followers, server, log."""

    def __init__(self, config: ServeSettings):
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
        from serving.alias_follower import AliasFollower
        from serving.dataplane import DataPlane, ServerState
        from serving.errors import ServerNotReady
        from serving.grpc_server import build_grpc_server
        from serving.metrics import ServerStats
        from serving.servicer import InferenceServicer
        from serving.version_sources import open_source
        from serving.worker_snapshots import SnapshotPublisher

        cfg = self.config
        self._loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        stats = ServerStats()
        self.stats = stats
        repository = _repository(cfg, stats)
        self.repository = repository
        state = ServerState()
        self.state = state
        prediction_log = _prediction_log(cfg, stats)
        shipper = prediction_log.shipper if prediction_log is not None else None
        if shipper is not None:
            stats.log_pending = lambda: shipper.pending
        source = open_source(cfg)
        stats.registry = source.status
        aliases = [cfg.aliases[0]] if cfg.model_path else cfg.aliases
        follower = AliasFollower(repository, loop, source, cfg.model_name, aliases)

        plane = DataPlane(repository, stats, prediction_log, state, followers={cfg.model_name: follower})
        servicer = InferenceServicer(plane)
        grpc_server = build_grpc_server(cfg, servicer, ready=lambda: state.accepting and repository.is_ready())
        server, address, self.port = grpc_server.server, grpc_server.address, grpc_server.port
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
                "log_ship_to": str(shipper.destination) if shipper is not None else None,
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
                    await grpc_server.set_serving(ready)
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
            await grpc_server.health.enter_graceful_shutdown()
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
            source.close()
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
        (`guard_stop`): after a full grace period that leaves about HARD_STOP_MARGIN_S, and what does not ship
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


def _repository(cfg: ServeSettings, stats):
    from serving.loaded_model import RepositoryConfig
    from serving.repository import ModelRepository

    config = RepositoryConfig(
        max_batch_size=cfg.max_batch_size,
        max_queue_delay_us=cfg.max_queue_delay_us,
        queue_capacity=cfg.queue_capacity,
        max_queued_bytes=cfg.max_queued_bytes,
        batching=cfg.batching,
        intra_op_threads=cfg.intra_op_threads,
        nan_policy=cfg.nan_policy,
        default_alias=cfg.aliases[0],
    )
    return ModelRepository(config, stats)


def _prediction_log(cfg: ServeSettings, stats):
    """The prediction log, or None when the sample rate turns it off."""
    from serving.prediction_log import PredictionLog

    if cfg.prediction_log_sample_rate <= 0:
        return None
    return PredictionLog(
        cfg.prediction_log_dir,
        sample_rate=cfg.prediction_log_sample_rate,
        max_bytes=cfg.prediction_log_max_bytes,
        max_age_s=cfg.prediction_log_max_age_s,
        max_total_bytes=cfg.prediction_log_max_total_bytes,
        stats=stats,
        ship_to=ship_destination(cfg.log_ship_to),
    )


def guard_stop(worker: Worker, signals: set[signal.Signals]) -> None:
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


def run_event_loop(coroutine) -> None:
    # uvloop: about 5% less server CPU per request than asyncio's own loop under gRPC load.
    import uvloop

    uvloop.run(coroutine)
