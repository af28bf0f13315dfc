"""``cloud-server``: the grpc.aio server skeleton. Build, add the inference, health and
reflection services, start, load the model off the loop, report SERVING, and on SIGTERM/SIGINT
report NOT_SERVING and drain in-flight requests for ``--grace-seconds``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from alignedvq.v1 import inference_pb2, inference_pb2_grpc
from cloud_server.config import ServerConfig
from cloud_server.engine import Engine
from cloud_server.logs import configure as configure_logging
from cloud_server.metrics import Metrics
from cloud_server.security import SecurityConfigError, ServerSecurity
from cloud_server.service import InferenceService

log = logging.getLogger("cloud_server")
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


async def serve(config: ServerConfig) -> int:
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes)]
    try:  # before anything loads or binds: a half-configured TLS/auth setup is fatal, exit 2
        security = ServerSecurity.from_config(config)
    except SecurityConfigError as e:
        print(f"cloud-server: {e}", file=sys.stderr, flush=True)
        return 2
    server = grpc.aio.server(options=options, interceptors=security.interceptors)
    engine = Engine(config)
    metrics = Metrics()
    service = InferenceService(engine, metrics)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    port = security.bind(server, f"{config.host}:{config.port}")
    if port == 0:
        log.error("could not bind %s:%s", config.host, config.port)
        return 1
    log.info("transport: %s", security.description)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    # Parsed by tests and scripts that start the server on port 0.
    print(f"cloud-server listening on {config.host}:{port}", flush=True)
    if config.metrics_port is not None:
        metrics_port = metrics.serve(config.host, config.metrics_port)
        print(f"cloud-server metrics on http://{config.host}:{metrics_port}/metrics", flush=True)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    loader = asyncio.ensure_future(loop.run_in_executor(engine.executor, engine.load))
    await asyncio.wait({loader, asyncio.ensure_future(stopping.wait())},
                       return_when=asyncio.FIRST_COMPLETED)
    if loader.done():
        if loader.exception() is not None:
            log.error("could not load the model: %s", loader.exception())
            await server.stop(0)
            return 1
        metrics.watch(engine.scheduler)
        service.ready = True
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s (codec %s) on %s", engine.model_id,
                 engine.cloud.codec_fingerprint or "none", engine.config.resolved_device())
        print("cloud-server ready", flush=True)
        await stopping.wait()
    log.info("shutting down: draining in-flight requests for up to %.0f s", config.grace_seconds)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.grace_seconds)
    if engine.scheduler is not None:
        await loop.run_in_executor(None, engine.scheduler.stop, 5.0)
    engine.executor.shutdown(wait=False, cancel_futures=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    config = ServerConfig.from_args(argv)
    configure_logging(config.log_format)
    try:
        import uvloop

        return uvloop.run(serve(config))
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
