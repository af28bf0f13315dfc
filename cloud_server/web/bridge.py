"""One gRPC-Web call, forwarded to the server's own gRPC port and back.

The front does no inference-service work of its own: each call goes over a loopback grpc.aio
channel (a Unix socket in a private folder, cloud_server/web/front.py) to the very server the
native port serves, so the RPC layer (cloud_server/calls.py: token check, byte counting,
validation errors, metrics, request ids, logging) and the gRPC limits apply to a browser's call
by construction. What it adds is the translation: frames in (cloud_server/web/grpc_web.py),
``authorization``, ``x-request-id`` and ``grpc-timeout`` forwarded as metadata and deadline, the
server's initial metadata as response headers, the messages as frames, the status as the
trailers frame."""

from __future__ import annotations

import logging
import re

import grpc
from aiohttp import web

from alignedvq.v1 import inference_pb2 as pb
from cloud_server.web import grpc_web

log = logging.getLogger("cloud_server")

SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"]
# What a browser may send as metadata (the contract's client keys, protos/README.md).
FORWARDED = ("authorization", "x-request-id")
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def timeout_of(header: str | None) -> float | None:
    """gRPC's ``grpc-timeout`` (``120S``, ``500m``) in seconds; None when absent or malformed."""
    match = _TIMEOUT.match(header or "")
    return int(match.group(1)) * _UNITS[match.group(2)] if match else None


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is longer than ``limit`` (nothing more is read)."""
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Bridge:
    """``target``: the server's loopback address; ``max_message_bytes``: the server's limit,
    so a body too large to hold one allowed message is refused as gRPC refuses it."""

    def __init__(self, target: str, max_message_bytes: int):
        self.target, self.max_message_bytes = target, max_message_bytes
        self.channel: grpc.aio.Channel | None = None
        self.methods = {m.name: m for m in SERVICE.methods}

    def open(self) -> None:
        # Unlimited here: the server's own limits refuse, with its own status and message.
        self.channel = grpc.aio.insecure_channel(self.target, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        content_type = request.headers.get("content-type", "")
        if not grpc_web.is_grpc_web(content_type):
            return web.Response(status=415, text="send gRPC-Web: content-type "
                                "application/grpc-web+proto or application/grpc-web-text\n")
        text = grpc_web.is_text(content_type)
        reply = Reply(request, text)
        method = self.methods.get(request.match_info["method"])
        if method is None:
            return await reply.status(grpc.StatusCode.UNIMPLEMENTED,
                                      f"no method {request.match_info['method']} in "
                                      f"{SERVICE.full_name}")
        if method.client_streaming:
            # Browsers cannot stream a request body, so gRPC-Web has no client streams.
            return await reply.status(grpc.StatusCode.UNIMPLEMENTED,
                                      f"{method.name} streams its request, which gRPC-Web "
                                      f"cannot carry; send the same messages in one "
                                      f"{method.name}Bundle call")
        # Base64 takes 4 bytes per 3, and the frame its 5; a longer body cannot hold one allowed
        # message, so it is refused before it is read in full.
        limit = (self.max_message_bytes + 5) * (4 if text else 3) // 3 + 4
        body = await read_limited(request, limit)
        if body is None:
            return await reply.status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"Received message larger than max (the body is over "
                                      f"{limit} bytes; max_message_bytes is "
                                      f"{self.max_message_bytes})")
        try:
            messages = grpc_web.decode_body(body, text)
        except grpc_web.FrameError as e:
            return await reply.status(grpc.StatusCode.INVALID_ARGUMENT, f"gRPC-Web body: {e}")
        if len(messages) != 1:
            return await reply.status(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"{method.name} takes one request message, the body holds "
                                      f"{len(messages)}")
        metadata = tuple((key, request.headers[key]) for key in FORWARDED
                         if key in request.headers)
        path = f"/{SERVICE.full_name}/{method.name}"
        kind = self.channel.unary_stream if method.server_streaming else self.channel.unary_unary
        call = kind(path)(messages[0], metadata=metadata,
                          timeout=timeout_of(request.headers.get("grpc-timeout")))
        return await reply.forward(call, method.server_streaming)


class Reply:
    """The HTTP response of one call: headers once the server's initial metadata is known,
    then frames, then the trailers frame."""

    def __init__(self, request: web.Request, text: bool):
        self.request, self.text = request, text
        self.response = web.StreamResponse(status=200, headers={
            "content-type": "application/grpc-web-text+proto" if text
            else "application/grpc-web+proto",
            "cache-control": "no-store"})

    async def write(self, data: bytes) -> None:
        await self.response.write(grpc_web.encode_text(data) if self.text else data)

    async def status(self, code: grpc.StatusCode, message: str) -> web.StreamResponse:
        """A call refused here, before it reached the server (not counted there: like a
        malformed HTTP/2 frame on the native port)."""
        log.info("web %s %s: %s", self.request.path, code.name, message)
        await self.response.prepare(self.request)
        await self.write(grpc_web.trailers(code.value[0], message))
        await self.response.write_eof()
        return self.response

    async def forward(self, call, streaming: bool) -> web.StreamResponse:
        try:
            for key, value in await call.initial_metadata() or ():
                if not key.endswith("-bin"):
                    self.response.headers[key] = value
            await self.response.prepare(self.request)
            if streaming:
                async for message in call:
                    await self.write(grpc_web.frame(message))
            else:
                await self.write(grpc_web.frame(await call))
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or ""
        finally:
            # The browser went away (a write failed, the handler was cancelled): the server
            # stops working on the call, as when a native client cancels.
            if not call.done():
                call.cancel()
        if not self.response.prepared:
            await self.response.prepare(self.request)
        await self.write(grpc_web.trailers(code.value[0], details))
        await self.response.write_eof()
        return self.response
