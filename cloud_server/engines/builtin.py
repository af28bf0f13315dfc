"""The ``builtin`` engine: our transformers model and continuous batcher behind the engine seam.

All model work (a request's ``prepare``, prefill, token steps) runs on the scheduler's one
thread (:mod:`cloud_server.engines.scheduler`), never on the event loop, which must keep serving
health checks, cancellations and other clients while a batch generates. Each request's results
cross back to the loop through its own queue, read by :meth:`BuiltinEngine.generate`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from cloud_server.cloud_half import CloudHalf
from cloud_server.engines.base import (
    EngineStats,
    Finished,
    GenerationEngine,
    GenerationRequest,
)
from cloud_server.engines.scheduler import Job, Scheduler

log = logging.getLogger("cloud_server")


class BuiltinEngine(GenerationEngine):
    name = "builtin"

    def __init__(self, cloud: CloudHalf, max_batch_size: int = 32,
                 batch_window_s: float = 0.005, max_queued: int = 64):
        self.scheduler = Scheduler(cloud, max_batch_size, batch_window_s, max_queued)

    @classmethod
    def create(cls, config, model) -> "BuiltinEngine":
        """From the server's config and its loaded model (:mod:`cloud_server.loader`)."""
        return cls(model.cloud, config.max_batch_size, config.batch_window_ms / 1000,
                   config.max_queued)

    async def start(self, warm_up: GenerationRequest) -> None:
        self.scheduler.start()
        # Admitted past the queue limit: a server started with --max-queued 0 (one that
        # refuses every answer) must still start.
        async for _ in self._generate(warm_up, enforce_queue_limit=False):
            pass

    def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finished]:
        return self._generate(request, enforce_queue_limit=True)

    async def _generate(self, request: GenerationRequest,
                        enforce_queue_limit: bool) -> AsyncIterator[str | Finished]:
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue = asyncio.Queue()

        def post(item):  # called on the model thread
            try:
                loop.call_soon_threadsafe(outbox.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        job = Job(request.prepare, request.question, request.max_new_tokens, post,
                  request.sampling, request.history,
                  request.image.cached_tokens)
        self.scheduler.submit(job, request.arrival, enforce_queue_limit)  # Overloaded, ShuttingDown
        ended = False
        try:
            while not ended:
                item = await outbox.get()
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                ended = isinstance(item, Finished)
                yield item
        finally:
            if not ended:  # closed early (client gone, deadline): leave the batch next step
                job.cancel()
                log.info("request %s aborted in the builtin engine", request.request_id)

    def stats(self) -> EngineStats:
        return EngineStats(queue_depth=self.scheduler.queue_depth(),
                           running=self.scheduler.active())

    def arriving(self):
        return self.scheduler.on_the_way()

    async def drain(self) -> None:
        self.scheduler.stop(timeout=0)  # refuse new requests; the thread ends when idle
        # Awaited here rather than joined on a worker thread: a join that never returns would
        # keep the process from exiting.
        while self.scheduler.thread.is_alive():
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.scheduler.stop(timeout=0)  # a daemon thread: it dies with the process


create = BuiltinEngine.create
