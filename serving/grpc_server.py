"""The gRPC side of one worker: the Open Inference Protocol service, health, reflection, its port."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.settings import ServeSettings


@dataclass
class GrpcServer:
    server: object  # grpc.aio.Server
    health: object  # the health servicer: set(), enter_graceful_shutdown()
    service_name: str  # inference.GRPCInferenceService, the name health reports on
    address: str
    port: int

    async def set_serving(self, ready: bool) -> None:
        from grpc_health.v1 import health_pb2

        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        await self.health.set(self.service_name, status)


def build_grpc_server(cfg: ServeSettings, servicer, ready: Callable[[], bool]) -> GrpcServer:
    """Bind (not start) the gRPC server for `servicer`; `ready` answers health checks live."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer
    from grpc_reflection.v1alpha import reflection
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from serving.interceptors import ServingInterceptor

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
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    service_name = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

    class LiveHealth(HealthServicer):
        """Check answers from the live readiness, so it never lags /ready; Watch follows it."""

        async def Check(self, request, context):  # noqa: N802 - gRPC method name
            if request.service in ("", service_name):
                return health_pb2.HealthCheckResponse(
                    status=health_pb2.HealthCheckResponse.SERVING
                    if ready()
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
        credentials = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot bind the gRPC port {address}")
    return GrpcServer(server, health, service_name, address, port)
