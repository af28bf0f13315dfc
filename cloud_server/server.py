"""``cloud-server``: the grpc.aio server skeleton, in two steps. :func:`build`: the server with
the inference, health and reflection services behind the RPC layer, bound (exit 2 for a bad
TLS/auth setup or a missing engine, 1 when the port cannot be bound). :class:`Running`: start,
load the model off the loop and start the engine, report SERVING, and on SIGTERM/SIGINT report
NOT_SERVING and drain in-flight requests for ``--grace-seconds`` (exit 1 when the model does
not load)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from alignedvq.v1 import inference_pb2, inference_pb2_grpc
from cloud_server import loader
from cloud_server.calls import RpcLayer
from cloud_server.config import ServerConfig
from cloud_server.engines import EngineUnavailable, engine_factory
from cloud_server.logs import configure as configure_logging
from cloud_server.metrics import Metrics
from cloud_server.security import SecurityConfigError, ServerSecurity
from cloud_server.service import Backend, InferenceService
from cloud_server.split_points import describe_points
from common._runtime.fast_exit import exit_now

if TYPE_CHECKING:
    from cloud_server.web.front import WebFront

log = logging.getLogger("cloud_server")
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class CannotStart(Exception):
    """The server cannot be built: ``code`` is the process's exit code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@dataclass
class Built:
    """A bound server with its services, not started; nothing loaded yet."""

    config: ServerConfig
    server: grpc.aio.Server
    port: int
    service: InferenceService
    health: health.aio.HealthServicer
    metrics: Metrics
    create_engine: Callable
    web: WebFront | None = None  # --web-port: gRPC-Web and the page, forwarded to this server


def build(config: ServerConfig) -> Built:
    """Options, security, the RPC layer, the servicers, health, reflection, and the bind."""
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes)]
    # Before anything loads or binds: a half-configured TLS/auth setup or an engine that is not
    # installed is fatal, exit 2.
    try:
        security = ServerSecurity.from_config(config)
        create_engine = engine_factory(config.engine)
    except (SecurityConfigError, EngineUnavailable) as e:
        print(f"cloud-server: {e}", file=sys.stderr, flush=True)
        raise CannotStart(2) from e
    metrics = Metrics()
    rpc_layer = RpcLayer(metrics, owned=SERVICE_NAME, authenticate=security.authenticate)
    server = grpc.aio.server(options=options, interceptors=[rpc_layer])
    service = InferenceService(metrics)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    port = security.bind(server, f"{config.host}:{config.port}")
    if port == 0:
        log.error("could not bind %s:%s", config.host, config.port)
        raise CannotStart(1)
    web = None
    if config.web_port is not None:
        # The web front forwards each call to this server, through every check the port above
        # applies; over a socket only this user can open, so it needs no TLS of its own.
        from cloud_server.web.front import WebFront  # aiohttp, only for servers that use it

        web = WebFront(config)
        if server.add_insecure_port(web.grpc_address) == 0:
            log.error("could not bind the web front's socket %s", web.grpc_address)
            raise CannotStart(1)
    log.info("transport: %s", security.description)
    return Built(config, server, port, service, health_servicer, metrics, create_engine, web)


class Running:
    """One start of a built server: listening at once, SERVING once the model is loaded and the
    engine started, draining on SIGTERM/SIGINT."""

    def __init__(self, built: Built):
        self.built, self.config = built, built.config
        self.engine = None
        self.stopping = asyncio.Event()
        # Never on the loop; on its own thread, so a SIGTERM during loading need not wait for it.
        self.load_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")

    async def run(self) -> int:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            await self._start()
        except CannotStart as e:
            await self.built.server.stop(0)
            await self._close_web()
            return e.code
        loading = asyncio.ensure_future(self._load_and_start())
        await asyncio.wait({loading, asyncio.ensure_future(self.stopping.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            if loading.exception() is not None:
                log.error("could not load the model: %s", loading.exception())
                await self.built.server.stop(0)
                await self._close_web()
                if self.engine is not None:  # started its processes (vLLM), then failed
                    await self.engine.close()
                return 1
            await self._serve(loading.result())
            await self.stopping.wait()
        await self._drain()
        return 0

    async def _close_web(self) -> None:
        if self.built.web is not None:
            await self.built.web.close()

    async def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            await self.built.health.set(name, status)

    async def _start(self) -> None:
        b, config = self.built, self.config
        await b.server.start()
        # Parsed by tests and scripts that start the server on port 0.
        print(f"cloud-server listening on {config.host}:{b.port}", flush=True)
        if config.metrics_port is not None:
            metrics_port = b.metrics.serve(config.host, config.metrics_port)
            print(f"cloud-server metrics on http://{config.host}:{metrics_port}/metrics",
                  flush=True)
        if b.web is not None:
            try:
                web_port = await b.web.start()
            except OSError as e:
                log.error("could not bind the web port %s:%s: %s", config.host, config.web_port, e)
                raise CannotStart(1) from e
            print(f"cloud-server web on {b.web.scheme}://{config.host}:{web_port}/", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

    async def _load_and_start(self) -> Backend:
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self.load_thread, loader.load, self.config)
        self.engine = self.built.create_engine(self.config, model)
        backend = Backend.build(self.config, model, self.engine)
        await self.engine.start(backend.preparer.warm_up_request())
        return backend

    async def _serve(self, backend: Backend) -> None:
        self.built.metrics.watch(self.engine)
        self.built.service.serve_with(backend)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        cloud = backend.model.cloud
        log.info("serving %s at split layers %s on %s with the %s engine", cloud.model_id,
                 describe_points(cloud.points), self.config.resolved_device(), self.engine.name)
        print("cloud-server ready", flush=True)

    async def _drain(self) -> None:
        log.info("shutting down: draining in-flight requests for up to %.0f s",
                 self.config.grace_seconds)
        # gRPC stops taking new calls and lets the open ones finish (they may still be reading
        # their messages, so the engine keeps admitting them), then the engine drains. The stop
        # begins before health says NOT_SERVING: the other way round, a caller that saw
        # NOT_SERVING and called at once could be taken by the transport and then cancelled by
        # the shutdown (CANCELLED, which no client retries) instead of refused (UNAVAILABLE).
        stopping = asyncio.ensure_future(self.built.server.stop(self.config.grace_seconds))
        await asyncio.sleep(0)  # stop() runs up to its first wait: new calls are refused
        await self.built.health.enter_graceful_shutdown()
        await stopping
        await self._close_web()  # its calls ended with the server's
        if self.engine is not None:
            try:
                await asyncio.wait_for(self.engine.drain(), 5.0)
            except TimeoutError:
                log.warning("the engine did not drain within 5 s")
            await self.engine.close()
        self.load_thread.shutdown(wait=False, cancel_futures=True)


async def serve(config: ServerConfig) -> int:
    try:
        built = build(config)
    except CannotStart as e:
        return e.code
    return await Running(built).run()


def main(argv: list[str] | None = None) -> int:
    return run(ServerConfig.from_args(argv))


def run(config: ServerConfig) -> int:
    configure_logging(config.log_format)
    try:
        import uvloop

        return uvloop.run(serve(config))
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.run(serve(config))


def console_main() -> None:
    """The ``cloud-server`` command: ends as soon as the drain is done (common._runtime.fast_exit),
    except after the vLLM engine, whose exit handlers clean up after its engine core."""
    config = ServerConfig.from_args(sys.argv[1:])
    code = run(config)
    if config.engine == "vllm":
        sys.exit(code)
    exit_now(code)


if __name__ == "__main__":
    console_main()
