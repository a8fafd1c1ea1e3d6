"""The server's one interceptor: bearer-token auth and the mapping of errors to gRPC status codes.

Two tokens, two planes. The inference token (`--token`) opens the data plane: inference, metadata,
statistics. The control plane (RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload) needs
the admin token (`--admin-token`) and is off without one, so an inference client can never unload
a model. The admin token opens both planes. A refused call never has its message parsed: the
denying handler's deserializer ignores the bytes. A body that is not the method's protobuf message
gets INVALID_ARGUMENT (gRPC itself would answer UNKNOWN with an exception's name).

Handlers raise `serving.errors` exceptions and nothing else; this is the only place that turns an
exception into a status (not found -> NOT_FOUND, not ready -> UNAVAILABLE, bad input ->
INVALID_ARGUMENT, full queue -> RESOURCE_EXHAUSTED, anything else -> INTERNAL with a fixed message
and the stack trace kept in the server's log).

Wrapped handlers are built once per method and cached, so a request pays one extra await.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc.aio import ServerInterceptor

from serving.auth import MISSING_TOKEN, BearerTokens
from serving.errors import MAX_MESSAGE_CHARS, InvalidInput, ServingError, status_for

log = logging.getLogger("serving.grpc")

# Liveness and health probes stay open when a token is required.
OPEN_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)


# Changing what is served is an operator's act, not a client's.
CONTROL_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/RepositoryIndex",
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryModelUnload",
    }
)


def _ignore_request(_data: bytes) -> None:
    return None


_UNDECODABLE = object()  # what _tolerant hands the handler for bytes that do not parse


def _tolerant(deserialize):
    if deserialize is None:
        return None

    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception:
            return _UNDECODABLE

    return parse


def _check_decoded(request, method: str) -> None:
    if request is _UNDECODABLE:
        raise InvalidInput(f"the request body is not a valid protobuf message for {method.rsplit('/', 1)[-1]}")


def _wrap_unary(behavior, method: str):
    async def guarded(request, context):
        try:
            _check_decoded(request, method)
            return await behavior(request, context)
        except ServingError as exc:
            await context.abort(exc.code, exc.reason[:MAX_MESSAGE_CHARS])
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_for(exc)
            log.error("unhandled error", exc_info=True, extra={"method": method})
            await context.abort(code, message)

    return guarded


def _wrap_stream(behavior, method: str):
    async def guarded(request_or_iterator, context):
        try:
            _check_decoded(request_or_iterator, method)
            async for item in behavior(request_or_iterator, context):
                yield item
        except ServingError as exc:
            await context.abort(exc.code, exc.reason[:MAX_MESSAGE_CHARS])
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_for(exc)
            log.error("unhandled error", exc_info=True, extra={"method": method})
            await context.abort(code, message)

    return guarded


def _rebuild(handler: grpc.RpcMethodHandler, wrap, deserializer=None) -> grpc.RpcMethodHandler:
    kwargs = {
        "request_deserializer": deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, "unary"), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, "stream"), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, "unary"), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, "stream"), **kwargs)


class ServingInterceptor(ServerInterceptor):
    def __init__(self, token: str | None = None, admin_token: str | None = None, open_methods=OPEN_METHODS):
        self._tokens = BearerTokens(token, admin_token)
        self._open = open_methods
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}
        self._denied: dict[tuple[str, grpc.StatusCode], grpc.RpcMethodHandler] = {}

    @staticmethod
    def _bearer(metadata) -> bytes | None:
        for key, value in metadata or ():
            if key == "authorization":
                return value.encode() if isinstance(value, str) else value
        return None

    def _refusal(self, method: str, metadata) -> tuple[grpc.StatusCode, str] | None:
        """Why this call may not proceed, or None when it may."""
        if method in self._open:
            return None
        supplied = self._bearer(metadata)
        if self._tokens.is_admin(supplied):
            return None
        if method in CONTROL_METHODS:
            if self._tokens.admin is None:
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "the control plane is off: start the server with an admin token (--admin-token)",
                )
            if supplied is None:
                return grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN
            return grpc.StatusCode.PERMISSION_DENIED, "this method needs the admin token"
        if self._tokens.opens_data_plane(supplied):
            return None
        return grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN

    def _deny(self, method: str, handler: grpc.RpcMethodHandler, code, message) -> grpc.RpcMethodHandler:
        denied = self._denied.get((method, code))
        if denied is None:

            async def refuse(request, context):
                await context.abort(code, message)

            async def refuse_stream(request, context):
                await context.abort(code, message)
                yield  # pragma: no cover - makes this an async generator

            streaming = bool(handler.unary_stream or handler.stream_stream)
            denied = _rebuild(handler, lambda _b, _k: refuse_stream if streaming else refuse, _ignore_request)
            self._denied[(method, code)] = denied
        return denied

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        refusal = self._refusal(method, handler_call_details.invocation_metadata)
        if refusal is not None:
            log.warning("call refused", extra={"method": method, "code": refusal[0].name})
            return self._deny(method, handler, *refusal)
        guarded = self._guarded.get(method)
        if guarded is None:
            streaming = bool(handler.unary_stream or handler.stream_stream)
            wrap = _wrap_stream if streaming else _wrap_unary
            deserializer = (
                handler.request_deserializer if handler.request_streaming else _tolerant(handler.request_deserializer)
            )
            guarded = _rebuild(handler, lambda behavior, _kind: wrap(behavior, method), deserializer)
            self._guarded[method] = guarded
        return guarded
