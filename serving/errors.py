"""Errors the serving stack raises, each with its gRPC status code, and the HTTP status of each code.

Handlers raise these; `serving.interceptors` turns them into gRPC statuses and `serving.rest` into
HTTP statuses, so no handler builds a status by hand and no stack trace ever reaches a client.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base class: `reason` is the message sent to the client."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class InvalidInput(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class ServerNotReady(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    """The client's deadline passed while its request waited or computed; it has left the queue."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(ServingError):
    """An unexpected failure, already logged with its stack trace; the client gets a fixed message."""

    code = grpc.StatusCode.INTERNAL


class ModelLoadError(ServingError):
    """A model version could not be loaded (corrupt file, changed signature, failed warm-up)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


INTERNAL_MESSAGE = "Internal server error"
# A status travels in HTTP/2 trailers, which clients cap (16 KiB hard in gRPC): keep every message short.
MAX_MESSAGE_CHARS = 1024


def quoted(text: str, limit: int = 64) -> str:
    """A client-supplied name as an error message shows it: cut, so a huge name cannot make the status
    itself too large for the client to read."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# gRPC code -> HTTP status, as google.rpc and grpc-gateway map them.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and client-safe message for an exception raised by a handler."""
    if isinstance(exc, ServingError):
        return exc.code, exc.reason
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, "Method not implemented"
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
