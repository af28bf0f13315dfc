"""``alignedvq.v1.InferenceService`` on grpc.aio."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from cloud_server.engine import Engine, TokenStreamer
from common.errors import InvalidRequest, NotReady, ServiceError, status_for

log = logging.getLogger("cloud_server")


async def _abort(context: grpc.aio.ServicerContext, error: ServiceError):
    code = status_for(error)
    log.info("refused: %s %s", code.name, error)
    await context.abort(code, str(error))


class InferenceService(pb_grpc.InferenceServiceServicer):
    def __init__(self, engine: Engine):
        self.engine = engine
        self.ready = False

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady("the model is still loading; retry when health reports SERVING")

    async def GetServerInfo(self, request, context):
        try:
            self._check_ready()
        except ServiceError as e:
            await _abort(context, e)
        return self.engine.info()

    async def AnswerFromCodes(self, request_iterator, context):
        started = time.perf_counter()
        try:
            self._check_ready()
            header, chunks, received = None, [], 0
            mode = None
            async for message in request_iterator:
                received += message.ByteSize()
                part = message.WhichOneof("part")
                if part == "header":
                    if header is not None:
                        raise InvalidRequest("a second header arrived; send exactly one header, "
                                             "then the chunks")
                    header = message.header
                    mode = self.engine.check_header(header)
                elif part == "chunk":
                    if header is None:
                        raise InvalidRequest("a chunk arrived before the header; send the "
                                             "header first")
                    expected_stages = header.stages if mode == "alignedvq" else 1
                    if message.chunk.stage != len(chunks) or len(chunks) >= expected_stages:
                        raise InvalidRequest(f"chunk for stage {message.chunk.stage} arrived; "
                                             f"expected stage {len(chunks)} of "
                                             f"{expected_stages}")
                    chunks.append(message.chunk.packed_indices)
                else:
                    raise InvalidRequest("an empty request message arrived; set header or chunk")
            if header is None:
                raise InvalidRequest("the stream ended without a header")
            t_decode = time.perf_counter()
            features = await self.engine.run(self.engine.decode, mode, chunks)
            decode_ms = (time.perf_counter() - t_decode) * 1000
        except ServiceError as e:
            await _abort(context, e)
            return
        async for response in self._answer(features, header.question, header.generation,
                                           received, decode_ms, started, context,
                                           pb.AnswerFromCodesResponse):
            yield response

    async def AnswerFromImage(self, request, context):
        started = time.perf_counter()
        try:
            self._check_ready()
            self.engine.check_question(request.question)
            self.engine.max_new_tokens(request.generation)
            t_decode = time.perf_counter()
            features = await self.engine.run(self.engine.image_features, request.image)
            decode_ms = (time.perf_counter() - t_decode) * 1000
        except ServiceError as e:
            await _abort(context, e)
            return
        async for response in self._answer(features, request.question, request.generation,
                                           request.ByteSize(), decode_ms, started, context,
                                           pb.AnswerFromImageResponse):
            yield response

    async def _answer(self, features, question, generation, received, decode_ms, started,
                      context, response_type):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        streamer = TokenStreamer(self.engine.cloud.processor.tokenizer, loop, queue)
        max_new = self.engine.max_new_tokens(generation)
        queued_at = time.perf_counter()
        job = asyncio.ensure_future(self.engine.run(self._timed_generate, features, question,
                                                    max_new, streamer, queued_at))
        try:
            while not (job.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield response_type(text_delta=getter.result())
                else:
                    getter.cancel()
            generation_result, queue_ms = job.result()
        except asyncio.CancelledError:
            streamer.cancelled.set()  # the client went away: stop spending compute on it
            raise
        summary = pb.AnswerSummary(
            payload_bytes=received, decode_ms=decode_ms, queue_ms=queue_ms,
            generate_ms=generation_result.generate_ms, tokens_generated=generation_result.tokens,
            model_id=self.engine.model_id, codec_fingerprint=self.engine.cloud.codec_fingerprint,
            answer=generation_result.text)
        log.info("answered %d B request in %.1f ms: %r", received,
                 (time.perf_counter() - started) * 1000, generation_result.text)
        yield response_type(summary=summary)

    def _timed_generate(self, features, question, max_new, streamer, queued_at):
        queue_ms = (time.perf_counter() - queued_at) * 1000
        return self.engine.generate(features, question, max_new, streamer), queue_ms
