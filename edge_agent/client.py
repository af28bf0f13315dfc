"""The edge side of one request: check compatibility, encode, stream, collect the answer."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import grpc
from PIL import Image

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.features import fingerprint_bytes


class IncompatibleServer(RuntimeError):
    pass


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
    messages: list[bytes] = field(default_factory=list, repr=False)

    def as_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "messages"}
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


def check_compatible(info: pb.GetServerInfoResponse, edge) -> None:
    """Refuse locally, before encoding anything, when the server could not decode our payload."""
    if info.vision_fingerprint != fingerprint_bytes(edge.vision.fingerprint):
        raise IncompatibleServer(
            f"server runs vision weights {info.vision_fingerprint.hex()} (model {info.model_id}, "
            f"split layer {info.split_layer}); this edge has {edge.vision.fingerprint} "
            f"(split layer {edge.split.split_layer})")
    if edge.codec is not None and info.codec_fingerprint != fingerprint_bytes(
            edge.codec_fingerprint):
        raise IncompatibleServer(f"server decodes codec {info.codec_fingerprint.hex() or '(none)'}"
                                 f"; this edge encodes with {edge.codec_fingerprint}")


def jpeg_upload(image: Image.Image, size: int, quality: int) -> bytes:
    """The paper's baseline: the image at the model's input size, JPEG-encoded."""
    scale = size / min(image.size)
    resized = image.resize((max(size, round(image.width * scale)),
                            max(size, round(image.height * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    resized.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _finish(result: Result, responses, started: float, on_delta) -> Result:
    for response in responses:
        if response.WhichOneof("part") == "text_delta":
            on_delta(response.text_delta)
        else:
            s = response.summary
            result.answer = s.answer
            result.cloud_ms = s.decode_ms + s.queue_ms + s.generate_ms
            result.tokens_generated = s.tokens_generated
            result.server_payload_bytes = s.payload_bytes
            result.model_id = s.model_id
    result.total_ms = (time.perf_counter() - started) * 1000
    result.network_ms = max(0.0, result.total_ms - result.edge_ms - result.cloud_ms)
    return result


def ask_with_codes(stub: pb_grpc.InferenceServiceStub, edge, image: Image.Image, question: str,
                   max_new_tokens: int = 0, on_delta=lambda text: None,
                   timeout: float | None = None, metadata=None) -> Result:
    started = time.perf_counter()
    chunks = edge.chunks([image])[0]
    messages = edge.messages(chunks, question, max_new_tokens)
    result = Result(mode=edge.mode)
    result.messages = [m.SerializeToString() for m in messages]
    result.payload_bytes = sum(map(len, result.messages))
    result.edge_ms = (time.perf_counter() - started) * 1000
    responses = stub.AnswerFromCodes(iter(messages), timeout=timeout, metadata=metadata)
    return _finish(result, responses, started, on_delta)


def ask_with_image(stub: pb_grpc.InferenceServiceStub, image: Image.Image, question: str,
                   size: int, quality: int = 90, max_new_tokens: int = 0,
                   on_delta=lambda text: None, timeout: float | None = None,
                   metadata=None) -> Result:
    started = time.perf_counter()
    request = pb.AnswerFromImageRequest(
        image=jpeg_upload(image, size, quality), question=question,
        generation=pb.GenerationParams(max_new_tokens=max_new_tokens) if max_new_tokens else None)
    result = Result(mode="image")
    result.messages = [request.SerializeToString()]
    result.payload_bytes = len(result.messages[0])
    result.edge_ms = (time.perf_counter() - started) * 1000
    responses = stub.AnswerFromImage(request, timeout=timeout, metadata=metadata)
    return _finish(result, responses, started, on_delta)


def channel(target: str, max_message_bytes: int = 8 * 1024 * 1024) -> grpc.Channel:
    return grpc.insecure_channel(target, options=[
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes)])
