"""The gRPC-Web wire format (github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md), both ways.

A body is a sequence of frames: 1 flag byte, a 4-byte big-endian length, the payload. Flag 0x00
is a message; 0x80 is the trailers frame, whose payload is HTTP/1 style header lines
(``grpc-status: 0\\r\\n``). ``application/grpc-web-text`` is the same bytes in base64 (each
write may be padded base64 of its own, so a reader decodes in 4-character groups).
Pure functions: the HTTP side (cloud_server/web/bridge.py) does the I/O."""

from __future__ import annotations

import base64
import binascii
import struct

MESSAGE, TRAILERS = 0x00, 0x80
COMPRESSED = 0x01
BINARY_TYPES = ("application/grpc-web", "application/grpc-web+proto")
TEXT_TYPES = ("application/grpc-web-text", "application/grpc-web-text+proto")


class FrameError(ValueError):
    """A request body that is not gRPC-Web frames; the message says what was wrong."""


def is_text(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in TEXT_TYPES


def is_grpc_web(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in BINARY_TYPES + TEXT_TYPES


def frame(payload: bytes, flag: int = MESSAGE) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


def trailers(code: int, message: str = "", extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The trailers frame. grpc-message is percent-encoded, as gRPC's HTTP/2 trailer is."""
    lines = [f"grpc-status: {code}"]
    if message:
        lines.append("grpc-message: " + percent_encode(message))
    lines += [f"{k}: {v}" for k, v in extra]
    return frame(("\r\n".join(lines) + "\r\n").encode(), TRAILERS)


def percent_encode(text: str) -> str:
    """gRPC's grpc-message encoding: printable ASCII but '%' as is, every other UTF-8 byte %XX."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}"
                   for b in text.encode("utf-8"))


def decode_body(body: bytes, text: bool) -> list[bytes]:
    """The request's messages. A trailers frame from a client, a compressed message (the page
    never sends one; no grpc-encoding is negotiated) or a truncated frame is refused."""
    if text:
        try:
            body = b"".join(base64.b64decode(body[i:i + 4], validate=True)
                            for i in range(0, len(body), 4)) if body else b""
        except (binascii.Error, ValueError):
            raise FrameError("the grpc-web-text body is not base64") from None
    messages, at = [], 0
    while at < len(body):
        if len(body) - at < 5:
            raise FrameError(f"a frame header is cut short ({len(body) - at} of 5 bytes)")
        flag, length = struct.unpack_from(">BI", body, at)
        at += 5
        if len(body) - at < length:
            raise FrameError(f"a frame says {length} bytes, {len(body) - at} follow")
        if flag & TRAILERS:
            raise FrameError("a client sent a trailers frame")
        if flag & COMPRESSED:
            raise FrameError("compressed messages are not accepted (send grpc-encoding identity)")
        messages.append(body[at:at + length])
        at += length
    return messages


def encode_text(data: bytes) -> bytes:
    return base64.b64encode(data)
