"""Domain errors and the one table that maps them to gRPC status codes.

Servicers and interceptors raise these; ``status_for`` turns them into statuses, so a status
code is chosen in exactly one place.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base: ``str(error)`` says what was wrong and what was expected."""


class InvalidRequest(ServiceError):
    pass


class Incompatible(ServiceError):
    """The request was built for another model or codec."""


class Overloaded(ServiceError):
    pass


class DeadlineExceeded(ServiceError):
    """The server's own per-request deadline passed (a client's deadline ends the call itself)."""


class ShuttingDown(ServiceError):
    pass


class NotReady(ServiceError):
    pass


class Unauthenticated(ServiceError):
    """Missing or unknown credentials (bearer token); the message never echoes the token."""


STATUS_FOR: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Incompatible: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def status_for(error: ServiceError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL
