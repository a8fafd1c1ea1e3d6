"""The Open Inference Protocol (KServe v2) gRPC servicer: `inference.GRPCInferenceService`.

A thin adapter: it turns protobuf into arrays (serving.codec), asks the repository for the model,
and turns arrays back into protobuf. It raises `serving.errors` exceptions and never sets a status
itself; `serving.interceptors` maps them. The generated stubs come from tritonclient, so
tritonclient, perf_analyzer and any KServe v2 client work unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serving.codec import decode_inputs, encode_outputs
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
from serving.signature import DATATYPE_TO_TRITON

log = logging.getLogger("serving.servicer")

SERVER_NAME = "mlops-serve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "schedule_policy"]
PLATFORM = "onnxruntime_onnx"


class ServerState:
    """Shared flags: `accepting` goes False when a graceful shutdown starts."""

    def __init__(self):
        self.accepting = True


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository, stats, prediction_log=None, followers=None, state=None):
        self._repo = repository
        self._stats = stats
        self._log = prediction_log
        self._followers = followers or {}
        self._state = state or ServerState()
        self._id_prefix = f"{uuid.uuid4().hex[:12]}-{os.getpid():x}-"
        self._ids = itertools.count(1)
        self._debug = log.isEnabledFor(logging.DEBUG)

    # --- health and metadata --------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._state.accepting and self._repo.is_ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._state.accepting and self._repo.ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        model = self._repo.get(request.name, request.version)
        response = pb.ModelMetadataResponse(
            name=model.name, versions=self._repo.versions(model.name), platform=PLATFORM
        )
        for spec in model.signature.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in model.signature.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return response

    async def ModelConfig(self, request, context):
        model = self._repo.get(request.name, request.version)
        batched = model.max_batch_size > 0
        config = mc.ModelConfig(
            name=model.name, platform=PLATFORM, backend="onnxruntime", max_batch_size=model.max_batch_size
        )
        for specs, add in ((model.signature.inputs, config.input.add), (model.signature.outputs, config.output.add)):
            for spec in specs:
                dims = spec.shape[1:] if batched else spec.shape
                add(name=spec.name, data_type=mc.DataType.Value(DATATYPE_TO_TRITON[spec.datatype]), dims=dims)
        if model.batcher is not None:
            config.dynamic_batching.max_queue_delay_microseconds = model.batcher.max_queue_delay_us
        config.version_policy.specific.versions.extend(int(v) for v in self._repo.versions(model.name) if v.isdigit())
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):
        name, version = request.name, request.version
        with self._stats.lock:
            items = sorted(self._stats.models.items())
        if name and name not in {key[0] for key, _ in items} and not self._repo.ready(name):
            raise ModelNotFound(f"model '{quoted(name)}' is not served here")
        response = pb.ModelStatisticsResponse()
        for (model_name, model_version), s in items:
            if (name and model_name != name) or (version and model_version != version):
                continue
            entry = response.model_stats.add(
                name=model_name,
                version=model_version,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
            )
            stats = entry.inference_stats
            stats.success.count, stats.success.ns = s.success_count, s.success_ns
            stats.fail.count, stats.fail.ns = s.fail_count, s.fail_ns
            stats.queue.count, stats.queue.ns = s.queue_count, s.queue_ns
            stats.compute_input.count, stats.compute_input.ns = s.infer_count, s.input_ns
            stats.compute_infer.count, stats.compute_infer.ns = s.infer_count, s.infer_ns
            stats.compute_output.count, stats.compute_output.ns = s.infer_count, s.output_ns
            for size, (count, ns) in sorted(s.batch_stats.items()):
                batch = entry.batch_stats.add(batch_size=size)
                batch.compute_infer.count, batch.compute_infer.ns = count, ns
        if name and version and not response.model_stats:
            raise ModelNotFound(f"model '{name}' has no statistics for version '{quoted(version)}'")
        return response

    # --- control plane --------------------------------------------------------------------------

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for record in self._repo.index(ready_only=request.ready):
            response.models.add(name=record.name, version=record.version, state=record.state, reason=record.reason)
        return response

    async def RepositoryModelLoad(self, request, context):
        follower = self._followers.get(request.model_name)
        if follower is None:
            raise ModelNotFound(f"model '{quoted(request.model_name)}' is not followed by this server")
        errors = await asyncio.get_running_loop().run_in_executor(None, follower.poll, True)
        if errors and not self._repo.ready(request.model_name):
            raise ModelLoadError(f"model '{request.model_name}' failed to load: {'; '.join(errors)}")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        follower = self._followers.get(request.model_name)
        if follower is not None:
            follower.paused = True
        await self._repo.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # --- inference ------------------------------------------------------------------------------

    async def ModelInfer(self, request, context):
        start = time.perf_counter_ns()
        try:
            if not self._state.accepting:  # draining for a graceful stop: clients retry elsewhere
                raise ServerNotReady("server is shutting down")
            model = self._repo.get(request.model_name, request.model_version)
        except ServingError as exc:
            codes = self._stats.unknown_model_failures
            codes[exc.code.name] = codes.get(exc.code.name, 0) + 1
            raise
        request_id = request.id or self._id_prefix + str(next(self._ids))
        stats = model.stats
        stats.pending += 1
        outcome = "INTERNAL"  # whatever escapes below without a known code
        try:
            feeds, rows = decode_inputs(request, model.signature, model.max_batch_size, model.nan_policy)
            decoded = time.perf_counter_ns()
            result = await self._infer(model, feeds, rows, context.time_remaining())
            computed = time.perf_counter_ns()
            names, outputs, datatypes = model.output_names, result.outputs, model.output_datatypes
            if request.outputs:
                names, outputs, datatypes = self._select_outputs(request, names, outputs, datatypes)
            response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request_id)
            encode_outputs(response, names, outputs, datatypes)
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
            # The one place a request leaves the accounting, whatever happened to it.
            stats.pending -= 1
            end = time.perf_counter_ns()
            if outcome is not None:
                stats.record_failure(end - start, outcome)
        stats.record_success(end - start, decoded - start, result.queue_ns, result.compute_ns, end - computed)
        plog = self._log
        if plog is not None and plog.sampled():
            # Every output is logged, whichever the client asked for.
            all_outputs = dict(zip(model.output_names, result.outputs, strict=True))
            plog.submit(request_id, model.name, model.version, feeds, all_outputs)
        if self._debug:
            log.debug(
                "inference",
                extra={
                    "request_id": request_id,
                    "model": model.name,
                    "version": model.version,
                    "rows": rows,
                    "duration_us": (end - start) // 1000,
                },
            )
        return response

    @staticmethod
    async def _infer(model, feeds, rows: int, remaining_s: float | None):
        """Run within the client's deadline: past it the request leaves the queue (its future is
        cancelled, so the batcher skips it) and the client gets DEADLINE_EXCEEDED."""
        if remaining_s is None:
            return await model.infer(feeds, rows)
        try:
            async with asyncio.timeout(remaining_s):
                return await model.infer(feeds, rows)
        except TimeoutError:
            raise DeadlineExceeded(f"deadline of the request passed after {remaining_s:.3f}s in the server") from None

    @staticmethod
    def _select_outputs(request, names, outputs, datatypes):
        index = {name: i for i, name in enumerate(names)}
        chosen = []
        for requested in request.outputs:
            i = index.get(requested.name)
            if i is None:
                raise InvalidInput(f"requested output '{quoted(requested.name)}' is not an output of the model")
            chosen.append(i)
        return [names[i] for i in chosen], [outputs[i] for i in chosen], [datatypes[i] for i in chosen]
