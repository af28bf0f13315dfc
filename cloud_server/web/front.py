"""The web port: an aiohttp server on the cloud server's own event loop (asyncio, so it shares
the loop with grpc.aio; nothing runs on another thread) with

* ``POST /alignedvq.v1.InferenceService/<Method>``: gRPC-Web (cloud_server/web/bridge.py),
  forwarded to the server's gRPC port over a Unix socket in a private (0700) folder;
* the page and what it loads (cloud_server/web/static.py);
* CORS for the origins ``--web-cors-origins`` lists (the page's own origin needs none);
* TLS with the native port's certificate and key (and client CA: mTLS) when it has them.

It binds in :meth:`WebFront.start`, while the model may still be loading: the page loads, and
calls get the native port's answer (UNAVAILABLE until SERVING, UNAUTHENTICATED without a token)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import tempfile

from aiohttp import web

from cloud_server.config import ServerConfig
from cloud_server.web import static
from cloud_server.web.bridge import FORWARDED, SERVICE, Bridge

log = logging.getLogger("cloud_server")

# What a page of another origin may send and read (the CORS preflight's answer).
ALLOW_HEADERS = ", ".join(("content-type", "x-grpc-web", "x-user-agent", "grpc-timeout",
                           *FORWARDED))
EXPOSE_HEADERS = "grpc-status, grpc-message, x-request-id"


def cors_origins(value: str | None) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/") for o in (value or "").split(",") if o.strip())


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The native port's TLS settings for HTTPS (files already checked by ServerSecurity)."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        context.load_verify_locations(config.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def build_app(bridge: Bridge, config: ServerConfig) -> web.Application:
    allowed = cors_origins(config.web_cors_origins)

    @web.middleware
    async def cors(request: web.Request, handler):
        origin = request.headers.get("origin", "").rstrip("/")
        granted = origin and ("*" in allowed or origin in allowed)
        if request.method == "OPTIONS" and request.headers.get("access-control-request-method"):
            response = web.Response(status=204 if granted else 403)
        else:
            response = await handler(request)
        if granted:
            response.headers.update({
                "access-control-allow-origin": origin, "vary": "origin",
                "access-control-allow-methods": "POST, GET, OPTIONS",
                "access-control-allow-headers": ALLOW_HEADERS,
                "access-control-expose-headers": EXPOSE_HEADERS,
                "access-control-max-age": "600"})
        return response

    app = web.Application(middlewares=[cors], client_max_size=1024)  # bodies: read_limited
    app.router.add_post(f"/{SERVICE.full_name}/{{method}}", bridge.handle)
    static.add_routes(app, config.web_edge)
    return app


class WebFront:
    def __init__(self, config: ServerConfig):
        self.config = config
        # The loopback's socket: only this user can reach the folder (mkdtemp makes it 0700),
        # so the web port's TLS cannot be bypassed from another account.
        self.folder = tempfile.mkdtemp(prefix="alignedvq-web-")
        self.socket_path = os.path.join(self.folder, "grpc.sock")
        self.bridge = Bridge(f"unix:{self.socket_path}", config.max_message_bytes)
        self.runner: web.AppRunner | None = None
        self.site: web.SockSite | None = None
        self.port = 0
        self.scheme = "https" if config.tls_cert else "http"

    @property
    def grpc_address(self) -> str:
        """The address the gRPC server must also bind (insecure: reachable by this user only)."""
        return f"unix:{self.socket_path}"

    async def start(self) -> int:
        self.bridge.open()
        self.runner = web.AppRunner(build_app(self.bridge, self.config), handle_signals=False,
                                    access_log=None)
        await self.runner.setup()
        sock = socket.create_server((self.config.host, self.config.web_port), reuse_port=False)
        self.site = web.SockSite(self.runner, sock, ssl_context=ssl_context(self.config),
                                 shutdown_timeout=self.config.grace_seconds)
        await self.site.start()
        self.port = sock.getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.bridge.close()
        shutil.rmtree(self.folder, ignore_errors=True)
