"""The data plane both protocol adapters call: health, metadata and inference, whatever the wire.

`serving.servicer` (gRPC, protobuf) and `serving.rest` (HTTP/REST, JSON) only convert their wire
format; everything a request means happens here once (the control plane's load and unload and the
statistics lookup too): the repository lookup, the drain refusal, the
per-version accounting (one context manager, whatever becomes of the request), the batcher call
within the client's deadline, the choice of outputs, the prediction log (with the row keys and event
time of the request's parameters, serving.log_parameters) and the request log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serving.errors import (
    INTERNAL_MESSAGE,
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ServerNotReady,
    ServingError,
    quoted,
)
from serving.log_parameters import log_parameters

log = logging.getLogger("serving.dataplane")

SERVER_NAME = "mlops-serve"
SERVER_VERSION = "0.1.0"
PLATFORM = "onnxruntime_onnx"


class ServerState:
    """Shared flags: `accepting` goes False when a graceful shutdown starts."""

    def __init__(self):
        self.accepting = True


@dataclass(slots=True)
class InferReply:
    """What a request gets back, for its adapter to encode: the chosen outputs of one version."""

    model_name: str
    model_version: str
    id: str
    names: list[str]
    outputs: list[np.ndarray]
    datatypes: list[str]


class InferRequest(Protocol):
    """One protocol's request: names what it asks for and decodes and encodes its own wire format."""

    model_name: str
    model_version: str
    id: str
    output_names: Sequence[str]  # the outputs asked for; empty for all
    parameters: Mapping[str, object]  # the request's parameters as Python values (serving.log_parameters.NAMES)

    def decode(self, model) -> tuple[dict[str, np.ndarray], int]: ...

    def encode(self, reply: InferReply) -> Any: ...


class _Timing:
    __slots__ = ("decoded", "computed", "result")


class DataPlane:
    def __init__(self, repository, stats, prediction_log=None, state: ServerState | None = None, followers=None):
        self.repository = repository
        self.stats = stats
        self.state = state or ServerState()
        self._followers = followers or {}  # model name -> its AliasFollower (the control plane's)
        self._log = prediction_log
        self._id_prefix = f"{uuid.uuid4().hex[:12]}-{os.getpid():x}-"
        self._ids = itertools.count(1)
        self._debug = log.isEnabledFor(logging.DEBUG)

    # --- health and metadata --------------------------------------------------------------------

    def ready(self) -> bool:
        return self.state.accepting and self.repository.is_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.state.accepting and self.repository.ready(name, version)

    def model(self, name: str, version: str = ""):
        """The version serving `name` (and `version`); ModelNotFound or ModelNotReady otherwise."""
        return self.repository.get(name, version)

    def model_metadata(self, name: str, version: str = "") -> dict:
        model = self.repository.get(name, version)
        return {
            "name": model.name,
            "versions": self.repository.versions(model.name),
            "platform": PLATFORM,
            **model.signature.to_dict(),
        }

    def versions(self, name: str) -> list[str]:
        return self.repository.versions(name)

    def statistics(self, name: str = "", version: str = "") -> list:
        """((model, version), ModelStats) of every version counted, or of `name` (and `version`)."""
        with self.stats.lock:
            items = sorted(self.stats.models.items())
        if name and name not in {key[0] for key, _ in items} and not self.repository.ready(name):
            raise ModelNotFound(f"model '{quoted(name)}' is not served here")
        chosen = [(key, s) for key, s in items if (not name or key[0] == name) and (not version or key[1] == version)]
        if name and version and not chosen:
            raise ModelNotFound(f"model '{name}' has no statistics for version '{quoted(version)}'")
        return chosen

    # --- control plane --------------------------------------------------------------------------

    def index(self, ready_only: bool = False):
        return self.repository.index(ready_only=ready_only)

    async def load(self, name: str) -> None:
        """Poll the registry for `name` now, resuming a follower paused by `unload` (RepositoryModelLoad)."""
        follower = self._followers.get(name)
        if follower is None:
            raise ModelNotFound(f"model '{quoted(name)}' is not followed by this server")
        errors = await asyncio.get_running_loop().run_in_executor(None, follower.poll, True)
        if errors and not self.repository.ready(name):
            raise ModelLoadError(f"model '{name}' failed to load: {'; '.join(errors)}")

    async def unload(self, name: str) -> None:
        """Stop serving `name` until the next `load` (RepositoryModelUnload)."""
        follower = self._followers.get(name)
        if follower is not None:
            follower.paused = True
        await self.repository.unload(name)

    # --- inference ------------------------------------------------------------------------------

    async def infer(self, request: InferRequest, remaining_s: float | None = None):
        """Answer `request` with its adapter's encoding of the reply; raises `ServingError`s only."""
        start = time.perf_counter_ns()
        try:
            if not self.state.accepting:  # draining for a graceful stop: clients retry elsewhere
                raise ServerNotReady("server is shutting down")
            model = self.repository.get(request.model_name, request.model_version)
        except ServingError as exc:
            self.refused(exc)
            raise
        request_id = request.id or self._id_prefix + str(next(self._ids))
        with self._accounting(model, request_id, start) as timing:
            feeds, rows = request.decode(model)
            row_keys, event_ts = log_parameters(request.parameters, rows)
            timing.decoded = time.perf_counter_ns()
            timing.result = result = await self._run(model, feeds, rows, remaining_s)
            timing.computed = time.perf_counter_ns()
            names, outputs, datatypes = model.output_names, result.outputs, model.output_datatypes
            if request.output_names:
                names, outputs, datatypes = _select_outputs(request.output_names, names, outputs, datatypes)
            response = request.encode(InferReply(model.name, model.version, request_id, names, outputs, datatypes))
        plog = self._log
        if plog is not None and plog.sampled():
            # Every output is logged, whichever the client asked for.
            logged = dict(zip(model.output_names, result.outputs, strict=True))
            plog.submit(request_id, model.name, model.version, feeds, logged, row_keys=row_keys, event_ts=event_ts)
        if self._debug:
            log.debug(
                "inference",
                extra={
                    "request_id": request_id,
                    "model": model.name,
                    "version": model.version,
                    "rows": rows,
                    "duration_us": (time.perf_counter_ns() - start) // 1000,
                },
            )
        return response

    def refused(self, exc: ServingError) -> None:
        """Count a request refused before it reached a model (mlops_serve_rejected_requests{code})."""
        codes = self.stats.unknown_model_failures
        codes[exc.code.name] = codes.get(exc.code.name, 0) + 1

    @contextlib.contextmanager
    def _accounting(self, model, request_id: str, start: int) -> Iterator[_Timing]:
        """The one place a request enters and leaves its version's statistics, whatever happens to it."""
        stats = model.stats
        stats.pending += 1
        timing = _Timing()
        outcome = "INTERNAL"  # whatever escapes without a known code
        try:
            yield timing
            outcome = None
        except ServingError as exc:
            outcome = exc.code.name
            log.info(
                "inference refused",
                extra={
                    "request_id": request_id,
                    "model": model.name,
                    "version": model.version,
                    "code": outcome,
                    "reason": exc.reason,
                },
            )
            raise
        except asyncio.CancelledError:  # the client went away; its request has left the queue
            outcome = "CANCELLED"
            raise
        except Exception as exc:
            log.error(
                "inference failed",
                exc_info=True,
                extra={"request_id": request_id, "model": model.name, "version": model.version},
            )
            raise InternalError(INTERNAL_MESSAGE) from exc
        finally:
            stats.pending -= 1
            end = time.perf_counter_ns()
            if outcome is None:
                result = timing.result
                stats.record_success(
                    end - start, timing.decoded - start, result.queue_ns, result.compute_ns, end - timing.computed
                )
            else:
                stats.record_failure(end - start, outcome)

    @staticmethod
    async def _run(model, feeds, rows: int, remaining_s: float | None):
        """Run within the client's deadline: past it the request leaves the queue (its future is
        cancelled, so the batcher skips it) and the client gets DEADLINE_EXCEEDED."""
        if remaining_s is None:
            return await model.infer(feeds, rows)
        try:
            async with asyncio.timeout(remaining_s):
                return await model.infer(feeds, rows)
        except TimeoutError:
            raise DeadlineExceeded(f"deadline of the request passed after {remaining_s:.3f}s in the server") from None


def _select_outputs(requested: Sequence[str], names, outputs, datatypes):
    index = {name: i for i, name in enumerate(names)}
    chosen = []
    for name in requested:
        i = index.get(name)
        if i is None:
            raise InvalidInput(f"requested output '{quoted(name)}' is not an output of the model")
        chosen.append(i)
    return [names[i] for i in chosen], [outputs[i] for i in chosen], [datatypes[i] for i in chosen]
