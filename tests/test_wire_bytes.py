"""Request bytes as they arrive, against a real cloud-server process, through a generic channel
with identity serializers (so the test, not Python protobuf, decides every byte):

* corrupt messages (valid gRPC framing, garbage inside) sent to every method of every service
  the server lists by reflection get INVALID_ARGUMENT (RESOURCE_EXHAUSTED over the size
  limit), one log line each and no traceback, and the server keeps answering;
* ``AnswerSummary.payload_bytes`` is the bytes that arrived, also when a client writes
  zero-valued fields explicitly (as protobufjs does), on both RPCs.
"""

import re
import time

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from alignedvq.v1 import inference_pb2 as pb
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf

pytestmark = pytest.mark.integration  # real servers or processes

IMAGE = SAMPLES_DIR / "images" / "sample2.png"
QUESTION = "how many objects are there?"
REQUEST_TYPES = {"alignedvq.v1.GetServerInfoRequest": pb.GetServerInfoRequest,
                 "alignedvq.v1.AnswerFromCodesRequest": pb.AnswerFromCodesRequest,
                 "alignedvq.v1.AnswerFromImageRequest": pb.AnswerFromImageRequest,
                 "alignedvq.v1.ProbeLinkRequest": pb.ProbeLinkRequest,
                 "alignedvq.v1.AnswerFromCodesBundleRequest": pb.AnswerFromCodesBundleRequest,
                 "grpc.health.v1.HealthCheckRequest": health_pb2.HealthCheckRequest,
                 "grpc.health.v1.HealthListRequest": health_pb2.HealthListRequest,
                 "grpc.reflection.v1alpha.ServerReflectionRequest":
                     reflection_pb2.ServerReflectionRequest}


def _invalid_random(seed: int, size: int) -> bytes:
    """Seeded random bytes that no request type parses (random bytes sometimes happen to be a
    valid message of unknown fields; those would test nothing)."""
    rng = np.random.default_rng(seed)
    while True:
        data = rng.bytes(size)
        if not any(_parses(t, data) for t in REQUEST_TYPES.values()):
            return data


def _parses(message_type, data: bytes) -> bool:
    try:
        message_type.FromString(data)
        return True
    except DecodeError:
        return False


CORRUPT = {
    "truncated-varint": b"\x08\x80",             # field 1, a varint whose continuation never ends
    "invalid-wire-type": b"\x0f\x00",            # field 1, wire type 7 (does not exist)
    "end-group-without-start": b"\x0c",          # field 1, wire type 4 out of place
    "truncated-length": b"\x12\x10abc",          # field 2 says 16 bytes, 3 follow
    "random": _invalid_random(0, 64),
    "random-5MiB": _invalid_random(1, 5 * 1024 * 1024),
}


@pytest.fixture(scope="module")
def server(default_server):
    """The session's default server; log checks read only the lines a test itself caused."""
    return default_server


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address, options=[
            ("grpc.max_send_message_length", 16 * 1024 * 1024)]) as ch:
        yield ch


def _methods(channel):
    """(path, request type name, client streaming, server streaming) of every served method,
    as server reflection describes them."""
    stub = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest
                                 .SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse
                                 .FromString)
    services = [s.name for r in stub(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=30) for s in r.list_services_response.service]
    methods = []
    for service in services:
        (response,) = stub(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=service)]), timeout=30)
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in response.file_descriptor_response.file_descriptor_proto]
        for f in files:
            for s in f.service:
                if f"{f.package}.{s.name}" == service:
                    methods += [(f"/{service}/{m.name}", m.input_type.lstrip("."),
                                 m.client_streaming, m.server_streaming) for m in s.method]
    return methods


def _send_raw(channel, path, client_streaming, server_streaming, raw: bytes):
    """Sends ``raw`` as the one request message; returns the status code. A streaming answer
    is read up to its first message (health's Watch never ends by itself)."""
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    method = kind[(client_streaming, server_streaming)](path)  # no serializers: bytes as given
    request = iter([raw]) if client_streaming else raw
    try:
        if server_streaming:
            call = method(request, timeout=60)
            next(call, None)
            call.cancel()
        else:
            method(request, timeout=60)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code(), e.details()


def _wait_for_log(server, pattern: str, since: int, timeout: float = 30.0) -> None:
    # The server writes a call's log line before it answers; the reader thread may lag a bit.
    # Only lines from ``since`` on count: the shared server logged other tests' calls before.
    deadline = time.monotonic() + timeout
    while not any(re.search(pattern, line) for line in server.stderr_lines[since:]):
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.02)


def test_corrupt_bytes_on_every_method_are_invalid_argument(server, channel):
    methods = _methods(channel)
    paths = {m[0] for m in methods}
    assert {"/alignedvq.v1.InferenceService/AnswerFromCodes",
            "/alignedvq.v1.InferenceService/AnswerFromImage",
            "/alignedvq.v1.InferenceService/GetServerInfo", "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"} <= paths
    assert all(t in REQUEST_TYPES for _, t, _, _ in methods), methods
    before = len(server.stderr_lines)
    outcomes = {}
    for path, _, client_streaming, server_streaming in methods:
        for name, raw in CORRUPT.items():
            outcomes[path, name] = _send_raw(channel, path, client_streaming, server_streaming,
                                             raw)
    for (path, name), outcome in outcomes.items():
        assert outcome != grpc.StatusCode.OK, (path, name)
        code, details = outcome
        assert code in (grpc.StatusCode.INVALID_ARGUMENT,
                        grpc.StatusCode.RESOURCE_EXHAUSTED), (path, name, code, details)
        assert len(details) < 200 and "<" not in details and "Traceback" not in details, details
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert "is not a valid" in details, (path, name, details)

    # Still serving, and the log holds one line per corrupt call and no traceback.
    assert _answer_codes(channel, _codes_messages())[-1].summary.answer
    _wait_for_log(server, r"AnswerFromCodes OK alignedvq", since=before)
    log = server.stderr_lines[before:]
    assert not [line for line in log if "Traceback" in line or "DecodeError" in line], log
    refused = [line for line in log if "is not a valid" in line]
    assert len(refused) == len(outcomes), "".join(log[-20:])


def test_an_empty_message_is_the_default_message(channel):
    """Zero bytes are a valid encoding (every field at its default): refused where defaults are
    not a valid request, answered where they are, never UNKNOWN or INTERNAL. (grpcio-health's
    asyncio servicer does not implement List: UNIMPLEMENTED, as without our RPC layer.)"""
    expected = {"/alignedvq.v1.InferenceService/AnswerFromCodes": "empty request message",
                "/alignedvq.v1.InferenceService/AnswerFromImage": "question is empty",
                # No messages: refused as an AnswerFromCodes stream that ends at once.
                "/alignedvq.v1.InferenceService/AnswerFromCodesBundle": "ended without a header"}
    unimplemented = {"/grpc.health.v1.Health/List"}
    for path, _, client_streaming, server_streaming in _methods(channel):
        outcome = _send_raw(channel, path, client_streaming, server_streaming, b"")
        if path in expected:
            assert outcome[0] == grpc.StatusCode.INVALID_ARGUMENT, (path, outcome)
            assert expected[path] in outcome[1]
        elif path in unimplemented:
            assert outcome[0] == grpc.StatusCode.UNIMPLEMENTED, (path, outcome)
        else:
            assert outcome == grpc.StatusCode.OK, (path, outcome)


# --- payload_bytes counts what arrived -------------------------------------------------------

def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


ZERO_MAX_NEW_TOKENS = _tag(1, 0) + b"\x00"   # GenerationParams{max_new_tokens: 0}, written out


def _codes_messages() -> list[bytes]:
    """A valid AlignedVQ request written the way protobufjs writes it: ``generation
    {max_new_tokens: 0}`` in the header and ``stage: 0`` in the first chunk are on the wire
    (Python protobuf would leave both out)."""
    edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)
    header, *chunks = edge.messages(edge.chunks([open_image(IMAGE)])[0], QUESTION)
    assert not header.header.HasField("generation")
    raw_header = _field(1, header.header.SerializeToString()
                        + _field(_generation_number(), ZERO_MAX_NEW_TOKENS))
    raw_chunks = []
    for message in chunks:
        chunk = message.chunk
        inner = _tag(1, 0) + _varint(chunk.stage) + _field(2, chunk.packed_indices)
        raw_chunks.append(_field(2, inner))
    return [raw_header, *raw_chunks]


def _generation_number() -> int:
    return pb.CodesHeader.DESCRIPTOR.fields_by_name["generation"].number


def _answer_codes(channel, raw_messages):
    method = channel.stream_stream("/alignedvq.v1.InferenceService/AnswerFromCodes",
                                   response_deserializer=pb.AnswerFromCodesResponse.FromString)
    return list(method(iter(raw_messages), timeout=120))


def test_payload_bytes_are_the_bytes_sent_for_codes(channel):
    raw = _codes_messages()
    sent = sum(map(len, raw))
    reencoded = sum(pb.AnswerFromCodesRequest.FromString(m).ByteSize() for m in raw)
    assert reencoded < sent  # the explicit zeros are what Python would not count
    summary = _answer_codes(channel, raw)[-1].summary
    assert summary.answer and summary.payload_bytes == sent


def test_payload_bytes_are_the_bytes_sent_for_an_image(channel):
    info = channel.unary_unary("/alignedvq.v1.InferenceService/GetServerInfo",
                               response_deserializer=pb.GetServerInfoResponse.FromString)(
        b"", timeout=30)
    request = pb.AnswerFromImageRequest(image=jpeg_baseline(open_image(IMAGE), info.image_size, 90),
                                        question=QUESTION)
    raw = request.SerializeToString() + _field(3, ZERO_MAX_NEW_TOKENS)
    assert pb.AnswerFromImageRequest.FromString(raw).ByteSize() < len(raw)
    method = channel.unary_stream("/alignedvq.v1.InferenceService/AnswerFromImage",
                                  response_deserializer=pb.AnswerFromImageResponse.FromString)
    summary = list(method(raw, timeout=120))[-1].summary
    assert summary.answer and summary.payload_bytes == len(raw)
