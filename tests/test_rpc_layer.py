"""cloud_server.calls.RpcLayer in-process: the interceptor is given a fake ``continuation`` that
returns real grpc method handlers around small servicer functions, and the handler it returns is
called with a fake context that records what a grpc.aio context would be told. No server, no
network: each status the layer chooses is checked at its source."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import grpc
import pytest

from alignedvq.v1 import inference_pb2 as pb
from cloud_server.calls import RpcLayer, current_call
from cloud_server.errors import Incompatible, Overloaded, Unauthenticated
from cloud_server.metrics import Metrics

OWNED = "alignedvq.v1.InferenceService"
CODES = f"/{OWNED}/AnswerFromCodes"
IMAGE = f"/{OWNED}/AnswerFromImage"
INFO = f"/{OWNED}/GetServerInfo"
HEALTH = "/grpc.health.v1.Health/Check"
TOKEN = "good-token"


class Aborted(grpc.aio.AbortError):
    """What a real grpc.aio context's abort() raises, carrying what it was told."""

    def __init__(self, code, details):
        super().__init__(details)
        self.code, self.details = code, details


class FakeContext:
    def __init__(self):
        self.initial_metadata = None
        self.aborted: Aborted | None = None

    async def send_initial_metadata(self, metadata):
        self.initial_metadata = tuple(metadata)

    async def abort(self, code, details=""):
        self.aborted = Aborted(code, details)
        raise self.aborted


def authenticate(metadata):
    if ("authorization", f"Bearer {TOKEN}") not in tuple(metadata or ()):
        raise Unauthenticated("this server requires a bearer token")


def layer(auth=None) -> RpcLayer:
    return RpcLayer(Metrics(), owned=OWNED, authenticate=auth)


def wrap(rpc_layer: RpcLayer, method: str, behavior, kind: str, metadata=()):
    """The handler the layer makes of ``behavior`` for ``method`` (``kind``: grpc's handler
    maker suffix, e.g. "unary_unary")."""
    message = pb.AnswerFromCodesRequest if method == CODES else (
        pb.GetServerInfoRequest if method == INFO else pb.AnswerFromImageRequest)
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    original = make(behavior, request_deserializer=message.FromString,
                    response_serializer=lambda m: m.SerializeToString())

    async def continuation(details):
        return original

    details = SimpleNamespace(method=method, invocation_metadata=tuple(metadata))
    return asyncio.run(rpc_layer.intercept_service(continuation, details))


def count(rpc_layer: RpcLayer, method: str, code: str, mode: str = "-") -> float:
    return rpc_layer.metrics.registry.get_sample_value(
        "alignedvq_requests_total", {"method": method, "mode": mode, "code": code}) or 0.0


async def _collect(stream):
    return [r async for r in stream]


def call_stream(handler, requests, context):
    """A stream handler's responses; ``requests`` are raw bytes, deserialized as gRPC would."""
    parse = handler.request_deserializer
    if handler.request_streaming:
        async def incoming():
            for raw in requests:
                yield parse(raw)
        request = incoming()
    else:
        request = parse(requests[0])
    run = handler.stream_stream if handler.request_streaming else handler.unary_stream
    return asyncio.run(_collect(run(request, context)))


def call_unary(handler, raw: bytes, context):
    return asyncio.run(handler.unary_unary(handler.request_deserializer(raw), context))


async def answer_codes(requests, context):
    async for message in requests:
        current_call().mode = "alignedvq"
        assert message.WhichOneof("part") == "header"
    yield pb.AnswerFromCodesResponse(text_delta="five")


def header_bytes() -> bytes:
    return pb.AnswerFromCodesRequest(header=pb.CodesHeader(question="q")).SerializeToString()


def test_a_good_streaming_call_is_counted_once_and_echoes_its_request_id():
    rpc = layer()
    handler = wrap(rpc, CODES, answer_codes, "stream_stream",
                   metadata=(("x-request-id", "camera-7/frame-42"),))
    context = FakeContext()
    responses = call_stream(handler, [header_bytes()], context)
    assert [r.text_delta for r in responses] == ["five"]
    assert context.initial_metadata == (("x-request-id", "camera-7/frame-42"),)
    assert context.aborted is None
    assert count(rpc, "AnswerFromCodes", "OK", "alignedvq") == 1
    total = sum(s.value for m in rpc.metrics.registry.collect() if m.name == "alignedvq_requests"
                for s in m.samples if s.name == "alignedvq_requests_total")
    assert total == 1


def test_a_unary_call_gets_a_fresh_request_id_when_the_clients_is_invalid():
    rpc = layer()

    async def info(request, context):
        return pb.GetServerInfoResponse(model_id=current_call().request_id)

    context = FakeContext()
    handler = wrap(rpc, INFO, info, "unary_unary", metadata=(("x-request-id", "has spaces"),))
    response = call_unary(handler, b"", context)
    echoed = dict(context.initial_metadata)["x-request-id"]
    assert echoed != "has spaces" and response.model_id == echoed
    assert count(rpc, "GetServerInfo", "OK") == 1


def test_corrupt_bytes_are_invalid_argument_naming_the_type():
    rpc = layer()
    handler = wrap(rpc, CODES, answer_codes, "stream_stream")
    context = FakeContext()
    with pytest.raises(Aborted):
        call_stream(handler, [b"\xff\xff\xff"], context)
    assert context.aborted.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "alignedvq.v1.AnswerFromCodesRequest" in context.aborted.details
    assert "(3 B)" in context.aborted.details
    assert count(rpc, "AnswerFromCodes", "INVALID_ARGUMENT") == 1


@pytest.mark.parametrize("error, code", [(Incompatible("codec 00 is not ours"),
                                          grpc.StatusCode.FAILED_PRECONDITION),
                                         (Overloaded("queue full; --max-queued 0"),
                                          grpc.StatusCode.RESOURCE_EXHAUSTED)])
def test_a_service_error_gets_its_table_code_and_message(error, code):
    rpc = layer()

    async def refuses(request, context):
        raise error
        yield  # a generator, like the real servicer

    handler = wrap(rpc, IMAGE, refuses, "unary_stream")
    context = FakeContext()
    with pytest.raises(Aborted):
        call_stream(handler, [b""], context)
    assert (context.aborted.code, context.aborted.details) == (code, str(error))
    assert count(rpc, "AnswerFromImage", code.name) == 1


def test_a_bug_is_internal_with_the_request_id_and_logged(caplog):
    rpc = layer()

    async def buggy(request, context):
        raise KeyError("the secret internals")

    handler = wrap(rpc, INFO, buggy, "unary_unary", metadata=(("x-request-id", "bug-1"),))
    context = FakeContext()
    with caplog.at_level(logging.ERROR, logger="cloud_server"), pytest.raises(Aborted):
        call_unary(handler, b"", context)
    assert context.aborted.code == grpc.StatusCode.INTERNAL
    assert "request id bug-1" in context.aborted.details
    assert "secret internals" not in context.aborted.details  # the log has it, the client not
    assert any(r.exc_info and "internal error" in r.getMessage() for r in caplog.records)
    assert count(rpc, "GetServerInfo", "INTERNAL") == 1


def test_not_implemented_is_unimplemented():
    rpc = layer()

    async def default_body(request, context):
        raise NotImplementedError("Method not implemented!")

    handler = wrap(rpc, INFO, default_body, "unary_unary")
    context = FakeContext()
    with pytest.raises(Aborted):
        call_unary(handler, b"", context)
    assert context.aborted.code == grpc.StatusCode.UNIMPLEMENTED
    assert count(rpc, "GetServerInfo", "UNIMPLEMENTED") == 1


def test_an_unknown_method_is_left_to_grpc():
    async def continuation(details):
        return None

    details = SimpleNamespace(method=f"/{OWNED}/Nope", invocation_metadata=())
    assert asyncio.run(layer().intercept_service(continuation, details)) is None


def test_auth_refuses_the_owned_service_but_not_health():
    rpc = layer(auth=authenticate)
    served = []

    async def info(request, context):
        served.append(1)
        return pb.GetServerInfoResponse()

    refused = FakeContext()
    with pytest.raises(Aborted):
        call_unary(wrap(rpc, INFO, info, "unary_unary"), b"", refused)
    assert refused.aborted.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.initial_metadata is None and not served  # refused before the servicer ran
    assert count(rpc, "GetServerInfo", "UNAUTHENTICATED") == 1

    allowed = FakeContext()
    call_unary(wrap(rpc, INFO, info, "unary_unary",
                    metadata=(("authorization", f"Bearer {TOKEN}"),)), b"", allowed)
    assert allowed.aborted is None and served == [1]

    health = FakeContext()  # no token: health stays open, and is neither counted nor echoed
    call_unary(wrap(rpc, HEALTH, info, "unary_unary"), b"", health)
    assert health.aborted is None and health.initial_metadata is None and served == [1, 1]
    assert count(rpc, HEALTH, "OK") == 0


def test_a_cancelled_call_is_counted_as_cancelled():
    rpc = layer()
    started = None

    async def slow(request, context):
        started.set()
        await asyncio.sleep(60)
        yield pb.AnswerFromImageResponse(text_delta="never")

    handler = wrap(rpc, IMAGE, slow, "unary_stream")

    async def cancel_it():
        nonlocal started
        started = asyncio.Event()
        task = asyncio.ensure_future(_collect(handler.unary_stream(
            handler.request_deserializer(b""), FakeContext())))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    assert count(rpc, "AnswerFromImage", "CANCELLED") == 1
    assert count(rpc, "AnswerFromImage", "OK") == 0
