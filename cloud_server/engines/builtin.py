"""The ``builtin`` engine: our transformers model and continuous batcher behind the engine seam.

All model work (a request's ``prepare``, prefill, token steps) runs on the scheduler's one
thread (:mod:`cloud_server.engines.scheduler`), never on the event loop, which must keep serving
health checks, cancellations and other clients while a batch generates. Each request's results
cross back to the loop through its own queue, read by :class:`RequestStream`.
"""

from __future__ import annotations

import asyncio

import torch

from cloud_server.engines.base import (EngineStats, Finished, GenerationEngine,
                                       GenerationRequest)
from cloud_server.engines.batching import Row
from cloud_server.engines.scheduler import Job, Scheduler
from cloud_server.cloud_half import CloudHalf


class RequestStream:
    """One request's text deltas, then its :class:`Finished`; stopping early (``aclose()``, or
    the reading task cancelled) cancels the job, so it leaves the batch at the next step."""

    def __init__(self, job: Job, outbox: asyncio.Queue):
        self.job, self.outbox = job, outbox
        self.ended = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> str | Finished:
        if self.ended:
            raise StopAsyncIteration
        try:
            item = await self.outbox.get()
        except BaseException:  # cancelled: client gone, deadline passed
            await self.aclose()
            raise
        if isinstance(item, BaseException):
            self.ended = True
            raise item
        if isinstance(item, Finished):
            self.ended = True
        return item

    async def aclose(self) -> None:
        if not self.ended:
            self.ended = True
            self.job.cancel()


class BuiltinEngine(GenerationEngine):
    name = "builtin"

    def __init__(self, cloud: CloudHalf, max_batch_size: int = 32,
                 batch_window_s: float = 0.005, max_queued: int = 64):
        self.cloud = cloud
        self.scheduler = Scheduler(cloud, max_batch_size, batch_window_s, max_queued)

    @classmethod
    def create(cls, config, model) -> "BuiltinEngine":
        """From the server's config and its loaded model (:mod:`cloud_server.loader`)."""
        return cls(model.cloud, config.max_batch_size, config.batch_window_ms / 1000,
                   config.max_queued)

    async def start(self) -> None:
        await asyncio.to_thread(self.warm_up)
        self.scheduler.start()

    def warm_up(self) -> None:
        """One prefill, join and step through the batch path, so the first user does not pay
        for lazy initialisation."""
        embeds = torch.zeros(1, self.cloud.image_tokens, self.cloud.text_hidden_size,
                             dtype=self.cloud.model.dtype)
        decoder = self.scheduler.decoder
        rows = [Row(None, 2), Row(None, 2)]
        decoder.join(rows[:1], embeds, ["warm up"])
        decoder.join(rows[1:], embeds, ["warm up, twice"])
        decoder.step()
        decoder.drop(rows)

    def stream(self, request: GenerationRequest) -> RequestStream:
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue = asyncio.Queue()

        def post(item):  # called on the model thread
            try:
                loop.call_soon_threadsafe(outbox.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        job = Job(request.prepare, request.question, request.max_new_tokens, post)
        self.scheduler.submit(job)  # raises Overloaded / ShuttingDown before any await
        return RequestStream(job, outbox)

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
