"""The Open Inference Protocol (KServe v2) gRPC servicer: `inference.GRPCInferenceService`.

A thin adapter: it turns protobuf into arrays (serving.codec) and arrays back into protobuf; what a
request means (lookup, accounting, batching, the prediction log) is `serving.dataplane`'s, shared
with the REST binding. It raises `serving.errors` exceptions and never sets a status itself;
`serving.interceptors` maps them. The generated stubs come from tritonclient, so tritonclient,
perf_analyzer and any KServe v2 client work unchanged.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serving.codec import decode_inputs, encode_outputs
from serving.dataplane import PLATFORM, SERVER_NAME, SERVER_VERSION, DataPlane, InferReply
from serving.log_parameters import NAMES as LOG_PARAMETERS
from serving.signature import DATATYPE_TO_TRITON

EXTENSIONS = ["model_repository", "model_configuration", "statistics", "schedule_policy"]


class _GrpcInfer:
    """A ModelInferRequest as the data plane sees it."""

    __slots__ = ("request", "model_name", "model_version", "id", "output_names", "parameters")

    def __init__(self, request):
        self.request = request
        self.model_name = request.model_name
        self.model_version = request.model_version
        self.id = request.id
        self.output_names = [o.name for o in request.outputs] if request.outputs else ()
        self.parameters = _parameters(request.parameters) if request.parameters else {}

    def decode(self, model):
        return decode_inputs(self.request, model.signature, model.max_batch_size, model.nan_policy)

    def encode(self, reply: InferReply):
        response = pb.ModelInferResponse(model_name=reply.model_name, model_version=reply.model_version, id=reply.id)
        encode_outputs(response, reply.names, reply.outputs, reply.datatypes)
        return response


def _parameters(parameters) -> dict[str, object]:
    """The InferParameters the data plane reads, as Python values."""
    values = {}
    for name in LOG_PARAMETERS:
        if name in parameters:  # never `parameters[name]` first: that would add the entry
            choice = parameters[name].WhichOneof("parameter_choice")
            if choice is not None:  # no value set: as if not given
                values[name] = getattr(parameters[name], choice)
    return values


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane):
        self._plane = plane

    # --- health and metadata --------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._plane.ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        return pb.ModelMetadataResponse(**self._plane.model_metadata(request.name, request.version))

    async def ModelConfig(self, request, context):
        model = self._plane.model(request.name, request.version)
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
        config.version_policy.specific.versions.extend(int(v) for v in self._plane.versions(model.name) if v.isdigit())
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):
        response = pb.ModelStatisticsResponse()
        for (model_name, model_version), s in self._plane.statistics(request.name, request.version):
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
        return response

    # --- control plane --------------------------------------------------------------------------

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for record in self._plane.index(ready_only=request.ready):
            response.models.add(name=record.name, version=record.version, state=record.state, reason=record.reason)
        return response

    async def RepositoryModelLoad(self, request, context):
        await self._plane.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self._plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # --- inference ------------------------------------------------------------------------------

    async def ModelInfer(self, request, context):
        return await self._plane.infer(_GrpcInfer(request), context.time_remaining())
