"""The malformed-request corpus against a real cloud-server process: every case gets its
documented status code and a message naming what was wrong, and a normal request still
succeeds after it, on each engine. Plus the server-side deadline. (A full queue:
tests/test_engine_contract.py.)"""

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from alignedvq.server_process import ServerProcess
from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf

pytestmark = pytest.mark.integration  # real servers or processes

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
IMAGE = SAMPLES_DIR / "images" / "sample2.png"
QUESTION = "how many objects are there?"


# The corpus runs against each engine: refusals happen before generation, so both must give the
# same codes and messages. The session's small server of each engine has the corpus's limits
# (tests/conftest.py SMALL_FLAGS).
@pytest.fixture
def server(small_server):
    return small_server


@pytest.fixture
def stub(server):
    return pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))


@pytest.fixture(scope="module")
def valid():
    """Valid request messages per mode, and a valid JPEG upload."""
    image = open_image(IMAGE)
    out = {}
    for mode in ("alignedvq", "fp16", "int8"):
        edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, mode)
        out[mode] = edge.messages(edge.chunks([image])[0], QUESTION)
    out["jpeg"] = jpeg_baseline(image, 128, 90)
    return out


def _header(messages, **changes):
    header = pb.CodesHeader()
    header.CopyFrom(messages[0].header)
    for key, value in changes.items():
        if key == "max_new_tokens":
            header.generation.max_new_tokens = value
        else:
            setattr(header, key, value)
    return pb.AnswerFromCodesRequest(header=header)


def _chunk(data, stage=0):
    return pb.AnswerFromCodesRequest(chunk=pb.CodesChunk(stage=stage, packed_indices=data))


def _png(width, height):
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _nan_fp16(v):
    data = bytearray(v["fp16"][1].chunk.packed_indices)
    data[0:2] = np.array([np.nan], dtype="<f2").tobytes()
    return bytes(data)


def _inf_int8_scale(v):
    data = bytearray(v["int8"][1].chunk.packed_indices)
    data[0:2] = np.array([np.inf], dtype="<f2").tobytes()
    return bytes(data)


def _codes(build):
    return ("codes", build)


def _image(build):
    return ("image", build)


A = "alignedvq"
# name: (rpc + request builder, expected code, fragment of the message)
CORPUS = {
    "empty stream": (_codes(lambda v: []), INVALID, "without a header"),
    "chunk before header": (_codes(lambda v: [v[A][1], v[A][0]]), INVALID, "before the header"),
    "two headers": (_codes(lambda v: [v[A][0], v[A][0], v[A][1]]), INVALID, "second header"),
    "empty message": (_codes(lambda v: [pb.AnswerFromCodesRequest()] + v[A]), INVALID,
                      "empty request message"),
    "header only": (_codes(lambda v: v[A][:1]), INVALID, "expected 1 chunk(s), got 0"),
    "wrong vision fingerprint": (_codes(lambda v: [_header(v[A], vision_fingerprint=b"\1" * 8)]
                                        + v[A][1:]), PRECONDITION, "vision weights"),
    "no vision fingerprint": (_codes(lambda v: [_header(v[A], vision_fingerprint=b"")]
                                     + v[A][1:]), PRECONDITION, "(none)"),
    "wrong codec fingerprint": (_codes(lambda v: [_header(v[A], codec_fingerprint=b"\2" * 8)]
                                       + v[A][1:]), PRECONDITION, "encoded with codec"),
    "unspecified encoding": (_codes(lambda v: [_header(v[A], encoding=0)] + v[A][1:]), INVALID,
                             "unknown feature encoding 0"),
    "unknown encoding": (_codes(lambda v: [_header(v[A], encoding=99)] + v[A][1:]), INVALID,
                         "unknown feature encoding 99"),
    "wrong token count": (_codes(lambda v: [_header(v[A], tokens=63)] + v[A][1:]), INVALID,
                          "header says 63 tokens"),
    "wrong bit width": (_codes(lambda v: [_header(v[A], bits=11)] + v[A][1:]), INVALID,
                        "11 bits"),
    "wrong stage count": (_codes(lambda v: [_header(v[A], stages=2)] + v[A][1:]), INVALID,
                          "2 stages"),
    "truncated indices": (_codes(lambda v: [v[A][0], _chunk(v[A][1].chunk.packed_indices[:-1])]),
                          INVALID, "holds 95 bytes, expected 96"),
    "extra index bytes": (_codes(lambda v: [v[A][0], _chunk(v[A][1].chunk.packed_indices
                                                            + b"\0")]),
                          INVALID, "holds 97 bytes, expected 96"),
    "empty chunk": (_codes(lambda v: [v[A][0], _chunk(b"")]), INVALID, "holds 0 bytes"),
    "chunk for stage 1 first": (_codes(lambda v: [v[A][0], _chunk(v[A][1].chunk.packed_indices,
                                                                  1)]),
                                INVALID, "expected stage 0"),
    "more chunks than stages": (_codes(lambda v: v[A] + [_chunk(b"", 1)]), INVALID,
                                "expected stage 1 of 1"),
    "empty question": (_codes(lambda v: [_header(v[A], question="")] + v[A][1:]), INVALID,
                       "question is empty"),
    "blank question": (_codes(lambda v: [_header(v[A], question=" \n\t ")] + v[A][1:]), INVALID,
                       "question is empty"),
    "over-long question": (_codes(lambda v: [_header(v[A], question="q" * 201)] + v[A][1:]),
                           INVALID, "201 characters; at most 200"),
    "too many new tokens": (_codes(lambda v: [_header(v[A], max_new_tokens=17)] + v[A][1:]),
                            INVALID, "max_new_tokens 17 is over this server's limit of 16"),
    "fp16 NaN": (_codes(lambda v: [v["fp16"][0], _chunk(_nan_fp16(v))]), INVALID, "NaN"),
    "fp16 short": (_codes(lambda v: [v["fp16"][0], _chunk(b"\0" * 100)]), INVALID,
                   "holds 100 bytes"),
    "int8 infinite scale": (_codes(lambda v: [v["int8"][0], _chunk(_inf_int8_scale(v))]),
                            INVALID, "NaN or infinity"),
    "fp16 over the message limit": (_codes(lambda v: [v["fp16"][0], _chunk(b"\0" * 70000)]),
                                    EXHAUSTED, "larger than max"),
    "image empty": (_image(lambda v: pb.AnswerFromImageRequest(question=QUESTION)), INVALID,
                    "image is empty"),
    "image garbage": (_image(lambda v: pb.AnswerFromImageRequest(image=b"GIF89a junk",
                                                                  question=QUESTION)),
                      INVALID, "could not be decoded"),
    "image truncated": (_image(lambda v: pb.AnswerFromImageRequest(image=v["jpeg"][:200],
                                                                    question=QUESTION)),
                        INVALID, "could not be decoded"),
    "image bomb": (_image(lambda v: pb.AnswerFromImageRequest(image=_png(2000, 2000),
                                                               question=QUESTION)),
                   INVALID, "at most 1000000"),
    "image no question": (_image(lambda v: pb.AnswerFromImageRequest(image=v["jpeg"])), INVALID,
                          "question is empty"),
    "image too many new tokens": (_image(lambda v: pb.AnswerFromImageRequest(
        image=v["jpeg"], question=QUESTION, generation=pb.GenerationParams(max_new_tokens=99))),
        INVALID, "over this server's limit"),
    "image over the message limit": (_image(lambda v: pb.AnswerFromImageRequest(
        image=b"\xff" * 70000, question=QUESTION)), EXHAUSTED, "larger than max"),
}


def _send(stub, kind, request):
    if kind == "codes":
        return list(stub.AnswerFromCodes(iter(request), timeout=60))
    return list(stub.AnswerFromImage(request, timeout=60))


def test_the_corpus_has_at_least_25_cases():
    assert len(CORPUS) >= 25


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_request(name, stub, valid):
    (kind, build), code, fragment = CORPUS[name]
    with pytest.raises(grpc.RpcError) as err:
        _send(stub, kind, build(valid))
    assert err.value.code() == code, err.value.details()
    assert fragment in err.value.details()
    # ... and the server still answers a normal request.
    answer = _send(stub, "codes", valid[A])[-1].summary.answer
    assert answer


@pytest.mark.integration
def test_the_server_side_deadline_gives_deadline_exceeded(valid):
    with ServerProcess("--request-timeout-seconds", "0.001") as server:
        server.wait_ready()
        stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))
        with pytest.raises(grpc.RpcError) as err:
            _send(stub, "codes", valid[A])
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "--request-timeout-seconds" in err.value.details()
