"""The request messages of ``AnswerFromCodes``, built from chunks that are already packed.

Torch-free on purpose: the ONNX edge builds its messages with this and nothing heavier than
protobuf. The torch edge (``EdgeHalf.messages``) builds its messages here too, so both edges put
the same bytes on the wire."""

from __future__ import annotations

from alignedvq.v1 import inference_pb2 as pb


def fingerprint_bytes(hex_fingerprint: str) -> bytes:
    """A 16-hex-digit fingerprint as the 8 bytes the protocol carries."""
    return bytes.fromhex(hex_fingerprint)[:8]


def codes_request_messages(encoding: int, tokens: int, bits: int, stages: int,
                           chunks: list[bytes], vision_fingerprint: str, codec_fingerprint: str,
                           question: str = "", max_new_tokens: int = 0
                           ) -> list[pb.AnswerFromCodesRequest]:
    """One header, then one chunk per stage in order (protos/README.md)."""
    header = pb.CodesHeader(
        vision_fingerprint=fingerprint_bytes(vision_fingerprint),
        codec_fingerprint=fingerprint_bytes(codec_fingerprint) if codec_fingerprint else b"",
        encoding=encoding, tokens=tokens, bits=bits, stages=stages,
        question=question, generation=pb.GenerationParams(max_new_tokens=max_new_tokens)
        if max_new_tokens else None)
    msgs = [pb.AnswerFromCodesRequest(header=header)]
    msgs += [pb.AnswerFromCodesRequest(chunk=pb.CodesChunk(stage=s, packed_indices=c))
             for s, c in enumerate(chunks)]
    return msgs
