"""``alignedvq.v1.InferenceService`` on grpc.aio.

Each call: validate what is cheap on the event loop (header, question, limits), queue a job for
the model thread (RESOURCE_EXHAUSTED at once when the queue is full), stream its text deltas,
end with a summary. Every refusal is a domain error whose status comes from
``common.errors.STATUS_FOR``; every call is logged once, with its request id, and counted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from cloud_server.engine import Engine
from cloud_server.metrics import Metrics
from cloud_server.scheduler import Finished, Job
from common.errors import (DeadlineExceeded, InvalidRequest, NotReady, ServiceError,
                           status_for)
from common.request_ids import METADATA_KEY, is_valid, new_request_id

log = logging.getLogger("cloud_server")


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The client's id when it sent a valid one, else a fresh one."""
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY and is_valid(value):
            return value
    return new_request_id()


class Call:
    """What one RPC logs and counts when it ends, however it ends."""

    def __init__(self, service: "InferenceService", method: str,
                 context: grpc.aio.ServicerContext):
        self.service, self.method, self.context = service, method, context
        self.request_id = request_id(context)
        self.mode = "-"
        self.received = 0
        self.started = time.perf_counter()
        self.first_token: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def done(self, code: grpc.StatusCode, detail: str = "", **fields) -> None:
        m = self.service.metrics
        m.requests.labels(self.method, self.mode, code.name).inc()
        if code == grpc.StatusCode.OK:
            m.latency.labels(self.mode).observe(self.elapsed())
        log.info("%s %s %s %s", self.method, code.name, self.mode, detail,
                 extra={"request_id": self.request_id, "method": self.method, "mode": self.mode,
                        "code": code.name, "payload_bytes": self.received,
                        "ms": round(self.elapsed() * 1000, 2), **fields})

    async def refuse(self, error: ServiceError):
        code = status_for(error)
        self.done(code, str(error))
        await self.context.abort(code, str(error))

    async def fail(self, error: Exception):
        log.exception("internal error", extra={"request_id": self.request_id})
        self.done(grpc.StatusCode.INTERNAL, str(error))
        await self.context.abort(grpc.StatusCode.INTERNAL,
                                 f"internal error (request id {self.request_id}); see the "
                                 f"server log")


class InferenceService(pb_grpc.InferenceServiceServicer):
    def __init__(self, engine: Engine, metrics: Metrics | None = None):
        self.engine = engine
        self.metrics = metrics or Metrics()
        self.ready = False

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady("the model is still loading; retry when health reports SERVING")

    async def GetServerInfo(self, request, context):
        try:
            self._check_ready()
        except ServiceError as e:
            await _refuse_plain(context, e)
        return self.engine.info()

    async def AnswerFromCodes(self, request_iterator, context):
        call = Call(self, "AnswerFromCodes", context)
        await context.send_initial_metadata(((METADATA_KEY, call.request_id),))
        try:
            self._check_ready()
            with self.engine.scheduler.on_the_way():
                header, chunks = await self._read_codes(request_iterator, call)
                job, events = self._submit(call, functools.partial(
                    self.engine.codes_features, call.mode, chunks), header.question,
                    header.generation)
            async for response in self._stream(call, job, events, pb.AnswerFromCodesResponse):
                yield response
        except ServiceError as e:
            await call.refuse(e)
        except Exception as e:  # a bug: say so, keep serving
            await call.fail(e)
        except asyncio.CancelledError:
            call.done(grpc.StatusCode.CANCELLED, "client went away or its deadline passed")
            raise

    async def AnswerFromImage(self, request, context):
        call = Call(self, "AnswerFromImage", context)
        call.mode, call.received = "image", request.ByteSize()
        await context.send_initial_metadata(((METADATA_KEY, call.request_id),))
        try:
            self._check_ready()
            job, events = self._submit(call, functools.partial(
                self.engine.image_features, request.image), request.question, request.generation)
            async for response in self._stream(call, job, events, pb.AnswerFromImageResponse):
                yield response
        except ServiceError as e:
            await call.refuse(e)
        except Exception as e:
            await call.fail(e)
        except asyncio.CancelledError:
            call.done(grpc.StatusCode.CANCELLED, "client went away or its deadline passed")
            raise

    async def _read_codes(self, request_iterator, call: Call):
        """The header, then one chunk per stage, in order; anything else is refused."""
        header, chunks = None, []
        async for message in request_iterator:
            call.received += message.ByteSize()
            part = message.WhichOneof("part")
            if part == "header":
                if header is not None:
                    raise InvalidRequest("a second header arrived; send exactly one header, "
                                         "then the chunks")
                header = message.header
                call.mode = self.engine.check_header(header)
            elif part == "chunk":
                if header is None:
                    raise InvalidRequest("a chunk arrived before the header; send the header "
                                         "first")
                expected = header.stages if call.mode == "alignedvq" else 1
                if message.chunk.stage != len(chunks) or len(chunks) >= expected:
                    raise InvalidRequest(f"chunk for stage {message.chunk.stage} arrived; "
                                         f"expected stage {len(chunks)} of {expected}")
                chunks.append(message.chunk.packed_indices)
            else:
                raise InvalidRequest("an empty request message arrived; set header or chunk")
        if header is None:
            raise InvalidRequest("the stream ended without a header")
        return header, chunks

    def _submit(self, call: Call, prepare, question: str, generation):
        """Checks the question and limits, then queues the job; returns it and the queue its
        events arrive on. Raises Overloaded when the queue is full."""
        self.engine.check_question(question)
        max_new = self.engine.max_new_tokens(generation)
        self.metrics.payload_bytes.labels(call.mode).observe(call.received)
        self.metrics.compression_ratio.labels(call.mode).observe(
            self.engine.fp16_feature_bytes() / max(call.received, 1))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def deliver(kind, value):  # called on the model thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        job = Job(prepare, question, max_new, deliver)
        self.engine.submit(job)
        return job, events

    async def _stream(self, call: Call, job: Job, events: asyncio.Queue, response_type):
        """The job's text deltas as they come, then the summary."""
        timeout = self.engine.config.request_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                while True:
                    kind, value = await events.get()
                    if kind == "delta":
                        if call.first_token is None:
                            call.first_token = time.perf_counter()
                            self.metrics.ttft.labels(call.mode).observe(call.elapsed())
                        yield response_type(text_delta=value)
                    elif kind == "error":
                        raise value
                    else:
                        yield response_type(summary=self._summary(call, value))
                        return
        except TimeoutError:
            job.cancel()
            raise DeadlineExceeded(f"the request took longer than this server's "
                                   f"{timeout:g} s limit (--request-timeout-seconds); retry "
                                   f"later or ask for fewer tokens") from None
        except BaseException:
            job.cancel()  # client gone, deadline passed, or refused: stop spending compute
            raise

    def _summary(self, call: Call, result: Finished) -> pb.AnswerSummary:
        self.metrics.tokens.inc(result.tokens)
        if result.generate_ms > 0:
            self.metrics.tokens_per_second.observe(result.tokens / (result.generate_ms / 1000))
        call.done(grpc.StatusCode.OK, repr(result.text), tokens=result.tokens,
                  batch_size=result.batch_size, queue_ms=round(result.queue_ms, 2),
                  generate_ms=round(result.generate_ms, 2))
        return pb.AnswerSummary(
            payload_bytes=call.received, decode_ms=result.prepare_ms, queue_ms=result.queue_ms,
            generate_ms=result.generate_ms, tokens_generated=result.tokens,
            model_id=self.engine.model_id, codec_fingerprint=self.engine.cloud.codec_fingerprint,
            answer=result.text, batch_size=result.batch_size, request_id=call.request_id,
            codec_fingerprint_bytes=bytes.fromhex(self.engine.cloud.codec_fingerprint),
            prepare_ms=result.prepare_ms)


async def _refuse_plain(context, error: ServiceError):
    code = status_for(error)
    log.info("refused: %s %s", code.name, error)
    await context.abort(code, str(error))
