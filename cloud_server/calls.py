"""The one layer around every RPC the server answers (a grpc.aio server interceptor):

* request bytes: each method's request deserializer is wrapped, so bytes that are not a valid
  message become INVALID_ARGUMENT with a short message (never a traceback, UNKNOWN or INTERNAL),
  and the size of each message as it arrived on the wire is recorded (``Call.received``: what
  ``AnswerSummary.payload_bytes`` reports, not a re-encoding);
* authentication (``--auth-token-file``) for the inference service, which also names the
  caller (``Call.identity``);
* domain errors (``cloud_server.errors``) mapped to status codes by the one table, ``status_for``;
* for the inference service, one log line and one ``alignedvq_requests_total`` count per call,
  however it ends, auth refusals included.

Servicers raise domain errors and never abort by hand; they find their :class:`Call` with
:func:`current_call`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Callable

import grpc

from cloud_server.errors import InvalidRequest, ServiceError, status_for
from cloud_server.metrics import Metrics
from common.wire.request_ids import METADATA_KEY, is_valid, new_request_id

log = logging.getLogger("cloud_server")

_CURRENT: contextvars.ContextVar["Call"] = contextvars.ContextVar("alignedvq_call")


def current_call() -> "Call":
    """The running RPC's record (set by :class:`RpcLayer` in the RPC's own task)."""
    return _CURRENT.get()


def request_id(metadata) -> str:
    """The client's id when it sent a valid one, else a fresh one."""
    for key, value in metadata or ():
        if key == METADATA_KEY and is_valid(value):
            return value
    return new_request_id()


class Call:
    """What one RPC logs and counts when it ends, however it ends."""

    def __init__(self, metrics: Metrics | None, method: str, metadata):
        self.metrics, self.method = metrics, method
        self.request_id = request_id(metadata)
        self.mode = "-"
        self.received = 0  # bytes of the request messages as they arrived
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.ended = False
        self.log_ok = True  # False: a successful call is counted but not logged
        # Who is calling: its token's digest when the server requires tokens; "" (one caller
        # for all) without auth. Image handles are scoped to it.
        self.identity = ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def done(self, code: grpc.StatusCode, detail: str = "", **fields) -> None:
        """Logs and counts the call once (the first outcome wins)."""
        if self.ended:
            return
        self.ended = True
        if self.metrics is not None:
            self.metrics.requests.labels(self.method, self.mode, code.name).inc()
            if code == grpc.StatusCode.OK:
                self.metrics.latency.labels(self.mode).observe(self.elapsed())
        if code == grpc.StatusCode.OK and not self.log_ok:
            return
        log.info("%s %s %s %s", self.method, code.name, self.mode, detail,
                 extra={"request_id": self.request_id, "method": self.method, "mode": self.mode,
                        "code": code.name, "payload_bytes": self.received,
                        "ms": round(self.elapsed() * 1000, 2), **fields})


@dataclass(frozen=True)
class Received:
    """A request message as the wrapped deserializer hands it on: the parsed message (None when
    the bytes were not one) and its size on the wire."""

    message: object
    size: int
    error: str = ""


def tolerant(deserialize: Callable[[bytes], object], type_name: str):
    def parse(data: bytes) -> Received:
        try:
            return Received(deserialize(data), len(data))
        except Exception:  # DecodeError, or whatever a deserializer raises on bad bytes
            return Received(None, len(data), f"a request message ({len(data)} B) is not a valid "
                                             f"{type_name}; check the client's protobuf encoding")
    return parse


def _unwrap(received: Received, call: Call):
    call.received += received.size
    if received.error:
        raise InvalidRequest(received.error)
    return received.message


async def _messages(iterator, call: Call):
    async for received in iterator:
        yield _unwrap(received, call)


_KINDS = {(False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
          (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
          (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
          (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream")}


class _Method:
    """One call's wrapper (grpc.aio asks the interceptor for a handler per call): what the
    handler says about its method, and the steps the call goes through (begin, admit, run, end
    or refuse)."""

    def __init__(self, layer: "RpcLayer", full_method: str, metadata, handler):
        service, _, method = full_method.lstrip("/").rpartition("/")
        self.layer, self.full_method, self.metadata, self.handler = (layer, full_method,
                                                                     metadata, handler)
        self.owned = service == layer.owned
        # Calls of other services (health, reflection) are named in full in the log: they are
        # logged only when refused, and their short names would not say which service it was.
        self.name = method if self.owned else full_method
        make, attribute = _KINDS[(handler.request_streaming, handler.response_streaming)]
        self.make, self.behavior = make, getattr(handler, attribute)

    @property
    def type_name(self) -> str:
        # The generated deserializer is a bound ``Message.FromString``: its class names the type.
        owner = getattr(self.handler.request_deserializer, "__self__", None)
        return getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request message")

    def handler_for_server(self):
        run = self.stream if self.handler.response_streaming else self.unary
        return self.make(run, request_deserializer=tolerant(self.handler.request_deserializer,
                                                            self.type_name),
                         response_serializer=self.handler.response_serializer)

    # -- one call ------------------------------------------------------------------------
    def begin(self) -> Call:
        call = Call(self.layer.metrics if self.owned else None, self.name, self.metadata)
        _CURRENT.set(call)
        return call

    async def admit(self, call: Call, context) -> None:
        if not self.owned:
            return  # health probes and reflection need no credentials
        if self.layer.authenticate is not None:
            # Raises Unauthenticated; returns the caller's identity.
            call.identity = self.layer.authenticate(self.metadata) or ""
        await context.send_initial_metadata(((METADATA_KEY, call.request_id),))

    def ended(self, call: Call, code: grpc.StatusCode, detail: str = "") -> None:
        if self.owned:  # health probes and reflection are not logged unless refused
            call.done(code, detail)

    async def refuse(self, call: Call, context, error: Exception):
        if isinstance(error, ServiceError):
            code, detail = status_for(error), str(error)
            call.done(code, detail)
        elif isinstance(error, NotImplementedError):  # a generated servicer's default body
            code, detail = grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!"
            call.done(code, detail)
        else:  # a bug: say so, with its traceback, and keep serving
            log.error("internal error in %s", self.full_method, exc_info=error,
                      extra={"request_id": call.request_id})
            code = grpc.StatusCode.INTERNAL
            detail = f"internal error (request id {call.request_id}); see the server log"
            call.done(code, str(error))
        await context.abort(code, detail)

    @contextlib.asynccontextmanager
    async def outcome(self, call: Call, context):
        """However the call ends: OK, cancelled, refused (the table) or a bug."""
        try:
            await self.admit(call, context)
            yield
            self.ended(call, grpc.StatusCode.OK)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            self.ended(call, grpc.StatusCode.CANCELLED, "client went away or its deadline passed")
            raise
        except Exception as e:
            await self.refuse(call, context, e)

    def request_of(self, request, call: Call):
        if self.handler.request_streaming:
            return _messages(request, call)
        return _unwrap(request, call)

    async def stream(self, request, context):
        call = self.begin()
        async with self.outcome(call, context):
            result = self.behavior(self.request_of(request, call), context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            elif inspect.isawaitable(result):  # a servicer using context.write()
                await result
            else:
                for response in result:
                    yield response

    async def unary(self, request, context):
        call = self.begin()
        async with self.outcome(call, context):
            response = self.behavior(self.request_of(request, call), context)
            if inspect.isawaitable(response):  # grpc's generated stubs are plain defs
                response = await response
            return response


class RpcLayer(grpc.aio.ServerInterceptor):
    """``owned``: the service whose calls are logged, counted and authenticated (health and
    reflection stay open, so probes and tools need no credentials). ``authenticate(metadata)``
    raises Unauthenticated, or is None for a server without auth."""

    def __init__(self, metrics: Metrics, owned: str, authenticate=None):
        self.metrics, self.owned, self.authenticate = metrics, owned, authenticate

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: UNIMPLEMENTED, as gRPC answers it
        return _Method(self, handler_call_details.method,
                       handler_call_details.invocation_metadata, handler).handler_for_server()
