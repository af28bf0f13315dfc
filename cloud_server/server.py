"""``cloud-server``: the grpc.aio server skeleton. Build, add the inference, health and
reflection services, start, load the model off the loop and start the engine, report SERVING,
and on SIGTERM/SIGINT report NOT_SERVING and drain in-flight requests for ``--grace-seconds``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from alignedvq.v1 import inference_pb2, inference_pb2_grpc
from cloud_server.config import ServerConfig
from cloud_server import loader
from cloud_server.calls import RpcLayer
from cloud_server.engines import EngineUnavailable, engine_factory
from cloud_server.logs import configure as configure_logging
from cloud_server.metrics import Metrics
from cloud_server.security import SecurityConfigError, ServerSecurity
from cloud_server.service import Backend, InferenceService
from common._runtime.fast_exit import exit_now
from common._runtime.torchvision_cpu import install_import_hook

log = logging.getLogger("cloud_server")
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


async def serve(config: ServerConfig) -> int:
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes)]
    # Before anything loads or binds: a half-configured TLS/auth setup or an engine that is not
    # installed is fatal, exit 2.
    try:
        security = ServerSecurity.from_config(config)
        create_engine = engine_factory(config.engine)
    except (SecurityConfigError, EngineUnavailable) as e:
        print(f"cloud-server: {e}", file=sys.stderr, flush=True)
        return 2
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

    engine = None
    load_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")

    async def load_and_start():
        nonlocal engine
        # Never on the loop; on its own thread, so a SIGTERM during loading need not wait for it.
        model = await loop.run_in_executor(load_thread, loader.load, config)
        engine = create_engine(config, model)
        await engine.start()
        return Backend.build(config, model, engine)

    loading = asyncio.ensure_future(load_and_start())
    await asyncio.wait({loading, asyncio.ensure_future(stopping.wait())},
                       return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        if loading.exception() is not None:
            log.error("could not load the model: %s", loading.exception())
            await server.stop(0)
            return 1
        backend = loading.result()
        metrics.watch(engine)
        service.serve_with(backend)
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s (codec %s) on %s with the %s engine", backend.model.model_id,
                 backend.model.cloud.codec_fingerprint or "none", config.resolved_device(),
                 engine.name)
        print("cloud-server ready", flush=True)
        await stopping.wait()
    log.info("shutting down: draining in-flight requests for up to %.0f s", config.grace_seconds)
    await health_servicer.enter_graceful_shutdown()
    # gRPC stops taking new calls and lets the open ones finish (they may still be reading
    # their messages, so the engine keeps admitting them), then the engine drains.
    await server.stop(config.grace_seconds)
    if engine is not None:
        try:
            await asyncio.wait_for(engine.drain(), 5.0)
        except TimeoutError:
            log.warning("the engine did not drain within 5 s")
        await engine.close()
    load_thread.shutdown(wait=False, cancel_futures=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(ServerConfig.from_args(argv))


def run(config: ServerConfig) -> int:
    install_import_hook()  # before any transformers import (common/_runtime/torchvision_cpu.py)
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
