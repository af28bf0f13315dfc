"""The edge side of one request: encode, stream, collect the answer; optionally check
compatibility first (GetServerInfo). A follow-up question about an image already sent names it
by the handle the server returned (:func:`ask_follow_up`)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from PIL import Image

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import jpeg_baseline
from common.wire.messages import fingerprint_bytes
from edge_agent.encoder import EdgeEncoder


# AnswerSummary.finish_reason as edge-agent --json reports it.
FINISH_REASONS = {pb.FINISH_REASON_END: "end", pb.FINISH_REASON_LENGTH: "length",
                  pb.FINISH_REASON_STOP_STRING: "stop_string",
                  pb.FINISH_REASON_CANCELLED: "cancelled"}


def with_turn(message, generation: pb.GenerationParams | None = None, history=(),
              handle: bytes = b""):
    """Sets what a CodesHeader and an AnswerFromImageRequest share beyond the question: the
    generation settings (replacing max_new_tokens' own), the earlier turns ((question,
    answer) pairs) and a follow-up's image handle. Returns ``message``."""
    if generation is not None:
        message.generation.CopyFrom(generation)
    message.history.extend(pb.Turn(question=q, answer=a) for q, a in history)
    if handle:
        message.image_handle = handle
    return message


class IncompatibleServer(RuntimeError):
    """The server cannot decode this edge's payload: found by :func:`check_compatible` from
    GetServerInfo, or said by the server itself (FAILED_PRECONDITION) to ``ask_with_codes``."""


@dataclass
class Result:
    answer: str = ""
    mode: str = ""
    payload_bytes: int = 0
    edge_ms: float = 0.0
    network_ms: float = 0.0
    cloud_ms: float = 0.0
    total_ms: float = 0.0
    tokens_generated: int = 0
    server_payload_bytes: int = 0
    model_id: str = ""
    request_id: str = ""
    batch_size: int = 0
    split_layer: int | None = None  # where the server says it cut (None: an upload)
    # v1.2: the image bytes this request carried (packed chunks or the JPEG; 0 for a
    # follow-up), the edge's time to the first text delta, why the answer ended, the seed of a
    # sampled one and the prompt tokens the server did not compute afresh.
    image_bytes: int = 0
    ttft_ms: float | None = None
    finish_reason: str = ""
    seed: int | None = None
    cached_tokens: int = 0
    image_handle: bytes = field(default=b"", repr=False)  # for follow-ups; not printed
    messages: list[bytes] = field(default_factory=list, repr=False)
    auto: dict | None = None  # --mode auto: the path taken and the predictions (AutoChoice)

    def as_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()
             if k not in ("messages", "auto", "image_handle")}
        d = {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}
        return {**d, **(self.auto or {})}


def served_points(info: pb.GetServerInfoResponse) -> list[pb.SplitPoint]:
    """The split points a server decodes, the default first: its ``split_points`` (v1.2), or
    for an older server the one its top-level fields describe."""
    if info.split_points:
        return list(info.split_points)
    return [pb.SplitPoint(split_layer=info.split_layer, vision_fingerprint=info.vision_fingerprint,
                          codec_fingerprint=info.codec_fingerprint,
                          codebook_size=info.codebook_size, bits=info.bits, stages=info.stages,
                          tokens=info.tokens, cls_included=info.cls_included,
                          encodings=info.encodings,
                          coded_tokens=info.tokens if info.codec_fingerprint else 0)]


def check_compatible(info: pb.GetServerInfoResponse, edge: EdgeEncoder) -> None:
    """Refuse locally, before encoding anything, when the server could not decode our payload:
    it must serve the edge's split point (the same vision weights before the cut) and codec."""
    points = served_points(info)
    # The fingerprint of the weights before the cut names the split point (the server routes
    # a request by it too: cloud_server/validation.py).
    mine = fingerprint_bytes(edge.vision_fingerprint)
    point = next((p for p in points if p.vision_fingerprint == mine), None)
    if point is None:
        served = ", ".join(f"{p.vision_fingerprint.hex()} (split layer {p.split_layer})"
                           for p in points)
        raise IncompatibleServer(
            f"server runs vision weights {served} (model {info.model_id}); this edge has "
            f"{edge.vision_fingerprint} (split layer {edge.split_layer})")
    if edge.codec_fingerprint and point.codec_fingerprint != fingerprint_bytes(
            edge.codec_fingerprint):
        raise IncompatibleServer(f"server decodes codec {point.codec_fingerprint.hex() or '(none)'}"
                                 f" at split layer {point.split_layer}; this edge encodes with "
                                 f"{edge.codec_fingerprint}")


def _finish(result: Result, responses, started: float, on_delta) -> Result:
    for response in responses:
        if response.WhichOneof("part") == "text_delta":
            if result.ttft_ms is None:
                result.ttft_ms = (time.perf_counter() - started) * 1000
            on_delta(response.text_delta)
        else:
            s = response.summary
            result.answer = s.answer
            result.cloud_ms = s.decode_ms + s.queue_ms + s.generate_ms
            result.tokens_generated = s.tokens_generated
            result.server_payload_bytes = s.payload_bytes
            result.model_id = s.model_id
            result.request_id = s.request_id
            result.batch_size = s.batch_size
            result.split_layer = s.split_layer if s.HasField("split_layer") else None
            result.seed = s.seed if s.HasField("seed") else None
            result.finish_reason = FINISH_REASONS.get(s.finish_reason, "")
            result.cached_tokens = s.cached_tokens
            result.image_handle = s.image_handle
    result.total_ms = (time.perf_counter() - started) * 1000
    result.network_ms = max(0.0, result.total_ms - result.edge_ms - result.cloud_ms)
    return result


def _responses(open_call, timeout: float | None, retry):
    """The call's response stream, its first response already received: a refusal (the
    server's status) surfaces here, where it may still be retried, never after part of the
    answer has been shown."""
    def attempt(seconds: float | None):
        responses = open_call(seconds)
        try:
            first = next(responses)
        except StopIteration:
            return iter(())
        return itertools.chain([first], responses)

    return retry(attempt) if retry is not None else attempt(timeout)


def ask_with_codes(stub: pb_grpc.InferenceServiceStub, edge: EdgeEncoder, image: Image.Image,
                   question: str, max_new_tokens: int = 0, on_delta=lambda text: None,
                   timeout: float | None = None, metadata=None, retry=None,
                   chunks: list[bytes] | None = None, edge_ms: float | None = None,
                   generation: pb.GenerationParams | None = None, history=()) -> Result:
    """One RPC, with no GetServerInfo before it: the server checks the header's fingerprints and
    answers FAILED_PRECONDITION on a mismatch, raised here as :class:`IncompatibleServer`.
    ``retry`` (an :class:`edge_agent.retry.Retrying`) waits and retries within its own timeout;
    without it the call makes one attempt within ``timeout``. ``chunks``: the image's, already
    encoded (``--mode auto`` profiles a path on the request's image), in ``edge_ms``.
    ``generation`` (sampling too) replaces ``max_new_tokens``; ``history``: earlier (question,
    answer) turns about this image."""
    started = time.perf_counter() - (edge_ms or 0) / 1000
    if chunks is None:
        chunks = edge.chunks([image])[0]
    messages = edge.messages(chunks, question, max_new_tokens)
    with_turn(messages[0].header, generation, history)
    result = Result(mode=edge.mode, image_bytes=sum(map(len, chunks)))
    result.messages = [m.SerializeToString() for m in messages]
    result.payload_bytes = sum(map(len, result.messages))
    result.edge_ms = (time.perf_counter() - started) * 1000
    try:
        responses = _responses(lambda t: stub.AnswerFromCodes(iter(messages), timeout=t,
                                                              metadata=metadata), timeout, retry)
        return _finish(result, responses, started, on_delta)
    except grpc.RpcError as e:
        # The server's errors table gives FAILED_PRECONDITION to Incompatible only.
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
            raise IncompatibleServer(f"the server refused the request: {e.details()}") from e
        raise


def ask_with_image(stub: pb_grpc.InferenceServiceStub, image: Image.Image, question: str,
                   size: int, quality: int = 90, max_new_tokens: int = 0,
                   on_delta=lambda text: None, timeout: float | None = None,
                   metadata=None, retry=None, jpeg: bytes | None = None,
                   jpeg_ms: float | None = None, generation: pb.GenerationParams | None = None,
                   history=()) -> Result:
    """``jpeg``: the upload, already encoded (``--mode auto`` sizes it before choosing), in
    ``jpeg_ms``. ``generation`` and ``history`` as for :func:`ask_with_codes`."""
    started = time.perf_counter() - (jpeg_ms or 0) / 1000
    request = with_turn(pb.AnswerFromImageRequest(
        image=jpeg if jpeg is not None else jpeg_baseline(image, size, quality),
        question=question,
        generation=pb.GenerationParams(max_new_tokens=max_new_tokens) if max_new_tokens else None),
        generation, history)
    result = Result(mode="image", image_bytes=len(request.image))
    result.messages = [request.SerializeToString()]
    result.payload_bytes = len(result.messages[0])
    result.edge_ms = (time.perf_counter() - started) * 1000
    responses = _responses(lambda t: stub.AnswerFromImage(request, timeout=t, metadata=metadata),
                           timeout, retry)
    return _finish(result, responses, started, on_delta)


def ask_follow_up(stub: pb_grpc.InferenceServiceStub, handle: bytes, question: str,
                  history=(), generation: pb.GenerationParams | None = None,
                  upload: bool = False, on_delta=lambda text: None,
                  timeout: float | None = None, metadata=None, retry=None) -> Result:
    """A question about the image ``handle`` names (AnswerSummary.image_handle of an earlier
    answer), after the earlier ``history`` turns: no image bytes cross. ``upload``: ask through
    AnswerFromImage (the RPC an image-mode edge uses), else AnswerFromCodes, whose stream is
    then the header alone. An unknown or expired handle raises the server's
    FAILED_PRECONDITION as a grpc.RpcError: send the image again."""
    started = time.perf_counter()
    result = Result(mode="followup")
    if upload:
        request = with_turn(pb.AnswerFromImageRequest(question=question), generation, history,
                            handle)
        result.messages = [request.SerializeToString()]

        def call(seconds):
            return stub.AnswerFromImage(request, timeout=seconds, metadata=metadata)
    else:
        messages = [pb.AnswerFromCodesRequest(header=with_turn(
            pb.CodesHeader(question=question), generation, history, handle))]
        result.messages = [m.SerializeToString() for m in messages]

        def call(seconds):
            return stub.AnswerFromCodes(iter(messages), timeout=seconds, metadata=metadata)
    result.payload_bytes = sum(map(len, result.messages))
    return _finish(result, _responses(call, timeout, retry), started, on_delta)


def read_token(path: str | Path) -> str:
    """The first token of a token file (same format as the server's ``--auth-token-file``:
    one per line, blank lines and ``#`` comments ignored)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ValueError(f"{path} holds no token (one per line; '#' starts a comment)")


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """Call metadata carrying ``token`` as a bearer token; None when there is none."""
    return (("authorization", f"Bearer {token}"),) if token else None


def server_info(stub: pb_grpc.InferenceServiceStub, timeout: float | None = None,
                metadata=None, retry=None) -> pb.GetServerInfoResponse:
    """GetServerInfo; with ``retry`` (:class:`edge_agent.retry.Retrying`) it waits for a server
    that is still starting."""
    def attempt(seconds):
        return stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=seconds, metadata=metadata)

    return retry(attempt) if retry is not None else attempt(timeout)
