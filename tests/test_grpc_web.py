"""The gRPC-Web wire format of the web port (cloud_server/web/grpc_web.py), in-process."""

import base64
import struct

import pytest

from cloud_server.web import grpc_web
from cloud_server.web.bridge import timeout_of
from cloud_server.web.front import cors_origins


def test_frames_round_trip_in_binary_and_text():
    messages = [b"", b"\x0a\x00", bytes(range(256)) * 3]
    body = b"".join(grpc_web.frame(m) for m in messages)
    assert grpc_web.decode_body(body, text=False) == messages
    assert grpc_web.decode_body(base64.b64encode(body), text=True) == messages
    # A text body may be several base64 strings, each padded (one per write).
    pieces = b"".join(base64.b64encode(grpc_web.frame(m)) for m in messages)
    assert grpc_web.decode_body(pieces, text=True) == messages


def test_a_frame_is_flag_then_big_endian_length():
    assert grpc_web.frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


@pytest.mark.parametrize("body, says", [
    (b"\x00\x00\x00", "cut short"),
    (b"\x00\x00\x00\x00\x09abc", "says 9 bytes, 3 follow"),
    (grpc_web.frame(b"x", grpc_web.TRAILERS), "trailers frame"),
    (grpc_web.frame(b"x", grpc_web.COMPRESSED), "compressed"),
])
def test_malformed_bodies_are_refused_saying_why(body, says):
    with pytest.raises(grpc_web.FrameError, match=says):
        grpc_web.decode_body(body, text=False)


def test_text_that_is_not_base64_is_refused():
    with pytest.raises(grpc_web.FrameError, match="not base64"):
        grpc_web.decode_body(b"!!!!", text=True)


def test_trailers_carry_the_status_and_a_percent_encoded_message():
    t = grpc_web.trailers(3, "question 'é' is 100% blank\r\nx")
    flag, length = struct.unpack(">BI", t[:5])
    assert flag == 0x80 and length == len(t) - 5
    assert t[5:].decode() == ("grpc-status: 3\r\n"
                              "grpc-message: question '%C3%A9' is 100%25 blank%0D%0Ax\r\n")


def test_content_types():
    assert grpc_web.is_grpc_web("application/grpc-web+proto")
    assert grpc_web.is_grpc_web("application/grpc-web-text; charset=utf-8")
    assert grpc_web.is_text("application/grpc-web-text+proto")
    assert not grpc_web.is_text("application/grpc-web")
    assert not grpc_web.is_grpc_web("application/json")


def test_grpc_timeout_header():
    assert timeout_of("120S") == 120
    assert timeout_of("500m") == 0.5
    assert timeout_of("2M") == 120
    assert timeout_of(None) is None and timeout_of("soon") is None and timeout_of("-1S") is None


def test_cors_origins_flag():
    assert cors_origins("https://a.example/, http://b.example:8080") == {
        "https://a.example", "http://b.example:8080"}
    assert cors_origins(None) == frozenset() and cors_origins(" , ") == frozenset()
