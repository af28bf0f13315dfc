"""What an edge encoder offers the client, whatever runs it: the torch edge
(:class:`edge_agent.torch_edge.EdgeHalf`) and the ONNX Runtime edge
(:class:`edge_agent.onnx_edge.OnnxEdge`) both satisfy :class:`EdgeEncoder`, so
:mod:`edge_agent.client` asks with either. Torch-free.

Both subclass it, so a type checker holds them to it; tests/test_halves.py checks at run time
that each provides every member itself (one that forgot a method would otherwise inherit the
protocol's empty one)."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from PIL import Image

from alignedvq.v1 import inference_pb2 as pb


@runtime_checkable
class EdgeEncoder(Protocol):
    mode: str                # the feature mode it sends (common.wire.modes)
    vision_fingerprint: str  # 16 hex digits: the vision weights before the cut
    codec_fingerprint: str   # 16 hex digits; "" for a mode without a codec (fp16, int8)
    split_layer: int         # the vision block whose output crosses the wire
    image_size: int          # the side of the square the model's input is

    def chunks(self, images: Sequence[Image.Image]) -> list[list[bytes]]:
        """Each image's chunk payloads, one per stage, packed as protos/README.md says."""

    def messages(self, chunks: list[bytes], question: str = "",
                 max_new_tokens: int = 0) -> list[pb.AnswerFromCodesRequest]:
        """One image's ``AnswerFromCodes`` stream: the header, then its chunks in order."""
