"""The model thread: admits requests from a bounded queue into a continuously batched decode.

Requests arriving while the model is idle wait up to ``batch_window`` for the requests already
on their way (up to ``max_batch_size``); requests arriving while a batch runs join it at the
next token step.
Each request's text is handed to its owner (``Job.post``) as it is generated; a finished request
leaves the batch at once, and so does a cancelled one (client gone or deadline passed), so
neither keeps consuming compute. The queue in front is bounded: beyond ``max_queued`` waiting
requests, :meth:`Scheduler.submit` refuses at once instead of letting latency grow without end.

All model work happens on this one thread, a request's ``prepare`` included; the event loop only
validates and streams. :class:`cloud_server.engines.builtin.BuiltinEngine` wraps it in the engine
seam.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from cloud_server.engines.base import STOP_STRING, Finished
from cloud_server.engines.batching import BatchDecoder, Row
from cloud_server.errors import Overloaded, ServiceError, ShuttingDown
from cloud_server.sampling import GREEDY, Sampling

log = logging.getLogger("cloud_server")


class TextDeltas:
    """Turns a growing list of token ids into the newly visible text, never splitting a
    multi-byte character (the tokenizer shows a half character as U+FFFD).

    With stop strings (as vLLM's): the text ends before the first one generated, and
    :attr:`stopped` says it did; until then the last ``len(longest) - 1`` characters are held
    back, since they may be the start of one, so no streamed delta is ever taken back."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.sent = ""
        self.stop = stop
        self.hold = max(map(len, stop), default=1) - 1
        self.stopped = False

    def text(self, ids: list[int]) -> str:
        # Leading spaces of the first piece are dropped, as the final answer strips them.
        text = self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if found:
            self.stopped = True
            text = text[:min(found)]
        return text

    def delta(self, ids: list[int], final: bool = False) -> str:
        """``final``: the answer has ended, so nothing is held back any more."""
        text = self.text(ids)
        if not (final or self.stopped):
            if text.endswith("\ufffd"):
                return ""
            text = text[:len(text) - self.hold]
        if len(text) > len(self.sent):
            new, self.sent = text[len(self.sent):], text
            return new
        return ""


@dataclass
class Job:
    """One request as the model thread sees it. ``post`` is called on the model thread, so it
    must be thread-safe; it receives text deltas (str), then either one :class:`Finished` or
    the exception that failed the request."""

    prepare: Callable[[], torch.Tensor]  # image embeddings (n_image_tokens, lm_hidden)
    question: str
    max_new_tokens: int
    post: Callable[[object], None]
    sampling: Sampling = GREEDY
    history: tuple[tuple[str, str], ...] = ()
    cached_tokens: int = 0  # what Finished reports: prompt tokens the server reused
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    queue_ms: float = 0.0
    prepare_ms: float = 0.0
    started: float = 0.0
    batch_size_at_join: int = 0
    text: TextDeltas | None = None  # set when the job joins the batch

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Arrival:
    """A request counted as on its way (:meth:`Scheduler.on_the_way`) until it is submitted."""

    done: bool = False


class Scheduler:
    def __init__(self, cloud, max_batch_size: int = 32, batch_window_s: float = 0.005,
                 max_queued: int = 64):
        self.decoder = BatchDecoder(cloud)
        self.tokenizer = cloud.processor.tokenizer
        self.max_batch_size, self.batch_window_s = max_batch_size, batch_window_s
        self.max_queued = max_queued
        self.pending: collections.deque[Job] = collections.deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.incoming = 0  # requests being received or validated, not yet submitted
        self.thread = threading.Thread(target=self._run, name="model-scheduler", daemon=True)

    # -- event-loop side --------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job, arrival: "Arrival | None" = None,
               enforce_queue_limit: bool = True) -> None:
        """Queues the job, or refuses it. ``arrival`` (from :meth:`on_the_way`) stops counting
        under the same lock, so the model thread sees the request on its way or queued, never
        neither, and cannot start a batch in between without it. ``enforce_queue_limit=False``
        (the engine's own warm-up) skips the --max-queued check."""
        with self.wake:
            self._arrived(arrival)
            if self.stopping:
                raise ShuttingDown("the server is shutting down; retry on another replica")
            if enforce_queue_limit and len(self.pending) >= self.max_queued:
                raise Overloaded(f"{len(self.pending)} requests are already waiting (limit "
                                 f"{self.max_queued}, --max-queued); retry with backoff")
            self.pending.append(job)
            self.wake.notify()

    @contextlib.contextmanager
    def on_the_way(self):
        """Marks a request as arriving (its messages are being read and checked), so an idle
        model waits for it to batch with others; a request nobody else is near never waits.
        Gives the :class:`Arrival` to pass to :meth:`submit`."""
        arrival = Arrival()
        with self.wake:
            self.incoming += 1
        try:
            yield arrival
        finally:
            with self.wake:
                self._arrived(arrival)
                self.wake.notify()

    def _arrived(self, arrival: "Arrival | None") -> None:
        # Called holding self.wake; an arrival ends once, submitted or given up.
        if arrival is not None and not arrival.done:
            arrival.done = True
            self.incoming -= 1

    def queue_depth(self) -> int:
        return len(self.pending)

    def active(self) -> int:
        return len(self.decoder)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish what was admitted, then end the thread."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # -- model thread -----------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.pending and not len(self.decoder) and not self.stopping:
                    self.wake.wait()
                if self.stopping and not self.pending and not len(self.decoder):
                    return
                if not len(self.decoder):
                    self._wait_for_company()
                room = self.max_batch_size - len(self.decoder)
                taken = [self.pending.popleft() for _ in range(min(room, len(self.pending)))]
            try:
                self._admit(taken)
                self._leave_finished_or_cancelled()
                if len(self.decoder):
                    self.decoder.step()
                    self._leave_finished_or_cancelled()
            except Exception as e:  # a bug, not a bad request: fail this batch, keep serving
                log.exception("model step failed")
                for row in list(self.decoder.rows):
                    row.owner.post(e)
                self.decoder.drop(list(self.decoder.rows))

    def _wait_for_company(self) -> None:
        """Idle model, first request in: wait a moment for the requests already on their way to
        batch with it (up to ``batch_window``). With none on the way it starts at once, so a
        lone client pays no batching delay; later arrivals join between token steps anyway."""
        deadline = time.perf_counter() + self.batch_window_s
        while (self.incoming and len(self.pending) < self.max_batch_size
               and not self.stopping):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self.wake.wait(remaining)

    def _admit(self, jobs: list[Job]) -> None:
        ready, embeddings = [], []
        for job in jobs:
            if job.cancelled.is_set():
                continue  # gave up while queued: costs nothing more
            t0 = time.perf_counter()
            job.queue_ms = (t0 - job.submitted) * 1000
            try:
                embeds = job.prepare()
            except Exception as e:  # a bad payload (ServiceError) or a bug: this job only
                if not isinstance(e, ServiceError):
                    log.exception("preparing a request failed")
                job.post(e)
                continue
            job.prepare_ms = (time.perf_counter() - t0) * 1000
            ready.append(job)
            embeddings.append(embeds.reshape(embeds.shape[-2], embeds.shape[-1]))
        if not ready:
            return
        rows = [Row(job, job.max_new_tokens, job.sampling) for job in ready]
        now = time.perf_counter()
        for job in ready:
            job.started = now
            job.batch_size_at_join = len(self.decoder) + len(ready)
            job.text = TextDeltas(self.tokenizer, job.sampling.stop)
        try:
            self.decoder.join(rows, torch.stack(embeddings), [job.question for job in ready],
                              [job.history for job in ready])
        except Exception as e:  # a bug: these newcomers fail, the running batch carries on
            log.exception("prefill failed")
            for job in ready:
                job.post(e)

    def _leave_finished_or_cancelled(self) -> None:
        leaving = []
        for row in self.decoder.rows:
            job: Job = row.owner
            if job.cancelled.is_set():
                leaving.append(row)
                continue
            delta = job.text.delta(row.ids, final=row.finished)
            if job.text.stopped and not row.finished:  # a stop string ends it, held text too
                row.finished, row.finish_reason = True, STOP_STRING
            elif job.text.stopped:
                row.finish_reason = STOP_STRING  # its last token both completed one and ended
            if delta:
                job.post(delta)
            if row.finished:
                leaving.append(row)
                job.post(Finished(
                    text=job.text.text(row.ids).strip(), tokens=len(row.ids),
                    queue_ms=job.queue_ms, prepare_ms=job.prepare_ms,
                    generate_ms=(time.perf_counter() - job.started) * 1000,
                    batch_size=job.batch_size_at_join, finish_reason=row.finish_reason,
                    cached_tokens=job.cached_tokens))
        self.decoder.drop(leaving)
