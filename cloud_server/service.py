"""``alignedvq.v1.InferenceService`` on grpc.aio: converts messages to and from the engine.

Each call: read and validate the request (cheap, on the event loop), resolve a follow-up's
image handle or arrange for a first request's image to be kept (cloud_server/conversations.py),
hand the engine a
:class:`~cloud_server.engines.base.GenerationRequest` (RESOURCE_EXHAUSTED at once when its
queue is full: the engine's ``generate`` admits as its first step), convert its text deltas to
responses, end with a summary. Refusals are raised as domain errors; the RPC layer
(:mod:`cloud_server.calls`) turns them into status codes, and logs and counts every call once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import grpc

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from cloud_server.calls import Call, current_call
from cloud_server.config import ServerConfig
from cloud_server.conversations import Conversations
from cloud_server.engines.base import (
    CANCELLED,
    END,
    LENGTH,
    STOP_STRING,
    Finished,
    GenerationEngine,
    GenerationRequest,
)
from cloud_server.errors import DeadlineExceeded, NotReady
from cloud_server.info import server_info
from cloud_server.loader import CloudModel
from cloud_server.metrics import Metrics
from cloud_server.image_cache import ImageCache
from cloud_server.prepare import Preparer
from cloud_server.validation import CodesReader, RequestValidator, Validated

FINISH_REASONS = {END: pb.FINISH_REASON_END, LENGTH: pb.FINISH_REASON_LENGTH,
                  STOP_STRING: pb.FINISH_REASON_STOP_STRING, CANCELLED: pb.FINISH_REASON_CANCELLED}


@dataclass
class Backend:
    """What the servicer needs once the model is loaded and the engine started."""

    config: ServerConfig
    model: CloudModel
    validator: RequestValidator
    preparer: Preparer
    engine: GenerationEngine
    conversations: Conversations

    @classmethod
    def build(cls, config: ServerConfig, model: CloudModel,
              engine: GenerationEngine) -> "Backend":
        cache = ImageCache(config.image_cache_bytes, config.image_handle_ttl_seconds)
        return cls(config, model, RequestValidator(config, model),
                   Preparer(model, config.max_image_pixels), engine,
                   Conversations(cache, model.cloud.image_tokens))


class InferenceService(pb_grpc.InferenceServiceServicer):
    def __init__(self, metrics: Metrics | None = None):
        self.metrics = metrics or Metrics()
        self.backend: Backend | None = None  # set when the model is loaded: then it serves

    def serve_with(self, backend: Backend) -> None:
        self.metrics.watch_images(backend.conversations.cache)
        self.backend = backend

    def _ready(self) -> Backend:
        if self.backend is None:
            raise NotReady("the model is still loading; retry when health reports SERVING")
        return self.backend

    async def GetServerInfo(self, request, context):
        # Clients ask it before answers (edge-agent in image mode and with --check-server, the
        # Node client): one log line per answer is enough.
        current_call().log_ok = False
        backend = self._ready()
        return server_info(backend.model, backend.config)

    async def ProbeLink(self, request, context):
        # An edge measuring its link (edge-agent --mode auto, edge_agent/auto.py): counted,
        # logged only when refused.
        call = current_call()
        call.log_ok = False  # no model needed: it answers while the model is still loading
        return pb.ProbeLinkResponse(received_bytes=call.received)

    async def AnswerFromCodes(self, request_iterator, context):
        async for response in self._answer_codes(request_iterator, pb.AnswerFromCodesResponse):
            yield response

    async def AnswerFromCodesBundle(self, request, context):
        # The browser's form of AnswerFromCodes (gRPC-Web cannot stream a request): its messages
        # go through the very reader a stream's do, so order, header and chunk rules, and the
        # status codes, cannot drift apart. payload_bytes is this one message as it arrived.
        async def messages():
            for message in request.messages:
                yield message

        async for response in self._answer_codes(messages(), pb.AnswerFromCodesBundleResponse):
            yield response

    async def _answer_codes(self, messages, response_type):
        call = current_call()
        backend = self._ready()
        # Held to the end of the call, not only while reading: the engine stops counting the
        # request as on its way when it admits it (generate's first step, in _respond), so no
        # batch can start in between without it.
        with backend.engine.arriving() as arrival:
            reader = CodesReader(backend.validator)
            async for message in messages:
                reader.feed(message)
                call.mode = reader.mode
            request, chunks = reader.finish()
            if request.handle:
                prepare, image = backend.conversations.recall(request.handle, call.identity)
            else:
                prepare, image = backend.conversations.remember(
                    backend.preparer.from_codes(request.mode, chunks, request.split_layer),
                    call.identity, f"codes/{request.mode}/{request.split_layer}", chunks)
            job = self._start(backend, call, request, prepare, image, arrival)
            async for response in self._respond(backend, call, job,
                                                response_type, request.split_layer):
                yield response

    async def AnswerFromImage(self, request, context):
        call = current_call()
        call.mode = "image"
        backend = self._ready()
        validated = backend.validator.image_request(request)
        call.mode = validated.mode  # a follow-up's, when it names its image by handle
        if validated.handle:
            prepare, image = backend.conversations.recall(validated.handle, call.identity)
        else:
            prepare, image = backend.conversations.remember(
                backend.preparer.from_image(request.image), call.identity, "image",
                [request.image])
        job = self._start(backend, call, validated, prepare, image)
        async for response in self._respond(backend, call, job, pb.AnswerFromImageResponse):
            yield response

    def _start(self, backend: Backend, call: Call, request: Validated, prepare, image,
               arrival=None) -> GenerationRequest:
        """Counts the payload (refused requests too) and makes the engine's request."""
        self.metrics.payload_bytes.labels(call.mode).observe(call.received)
        if not request.handle:  # a follow-up carries no image to compare with
            self.metrics.compression_ratio.labels(call.mode).observe(
                backend.model.fp16_feature_bytes() / max(call.received, 1))
        return GenerationRequest(call.request_id, request.question, request.max_new_tokens,
                                 prepare, arrival, request.sampling, request.history, image)

    async def _respond(self, backend: Backend, call: Call, job: GenerationRequest,
                       response_type, split_layer: int | None = None):
        """The engine's text deltas as responses, then the summary. The first item is awaited
        before anything is sent, so the engine's refusal (Overloaded, ShuttingDown) leaves this
        call as its status code at once. Leaving early (client gone, deadline, error) closes the
        generator, which aborts the request in the engine."""
        timeout = backend.config.request_timeout_seconds
        async with contextlib.aclosing(backend.engine.generate(job)) as generation:
            try:
                async with asyncio.timeout(timeout):
                    async for item in generation:
                        if isinstance(item, Finished):
                            yield response_type(summary=self._summary(backend, call, job, item,
                                                                      split_layer))
                            return
                        if call.first_token is None:
                            call.first_token = time.perf_counter()
                            self.metrics.ttft.labels(call.mode).observe(call.elapsed())
                        yield response_type(text_delta=item)
            except (asyncio.CancelledError, GeneratorExit, TimeoutError) as stopped:
                # Stopped before its end (client gone, deadline): no summary says so.
                self.metrics.finish_reasons.labels(CANCELLED).inc()
                if isinstance(stopped, TimeoutError):
                    raise DeadlineExceeded(
                        f"the request took longer than this server's {timeout:g} s limit "
                        f"(--request-timeout-seconds); retry later or ask for fewer "
                        f"tokens") from None
                raise

    def _summary(self, backend: Backend, call: Call, job: GenerationRequest, result: Finished,
                 split_layer: int | None) -> pb.AnswerSummary:
        """``split_layer``: where a codes request was cut (None for an upload): its codec is the
        one reported."""
        self.metrics.tokens.inc(result.tokens)
        self.metrics.finish_reasons.labels(result.finish_reason).inc()
        if result.generate_ms > 0:
            self.metrics.tokens_per_second.observe(result.tokens / (result.generate_ms / 1000))
        seed = None if job.sampling.greedy else job.sampling.seed
        call.done(grpc.StatusCode.OK, repr(result.text), tokens=result.tokens,
                  batch_size=result.batch_size, queue_ms=round(result.queue_ms, 2),
                  generate_ms=round(result.generate_ms, 2), finish_reason=result.finish_reason,
                  cached_tokens=result.cached_tokens, seed=seed)
        codec = backend.model.cloud.point(split_layer).codec_fingerprint
        return pb.AnswerSummary(
            payload_bytes=call.received, decode_ms=result.prepare_ms, queue_ms=result.queue_ms,
            generate_ms=result.generate_ms, tokens_generated=result.tokens,
            model_id=backend.model.cloud.model_id, codec_fingerprint=codec, answer=result.text,
            batch_size=result.batch_size, request_id=call.request_id,
            codec_fingerprint_bytes=bytes.fromhex(codec), prepare_ms=result.prepare_ms,
            split_layer=split_layer, seed=seed,
            finish_reason=FINISH_REASONS[result.finish_reason],
            cached_tokens=result.cached_tokens, image_handle=job.image.handle or b"")

