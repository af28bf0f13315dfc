"""The feature encodings: how features at the cut become chunk payloads and back, their wire
enum and their payload size, one class per feature mode (the mode names sit in the torch-free
:mod:`common.wire.modes`, the messages around the chunks in :mod:`common.wire.messages`).

Three encodings share one message layout (a ``CodesHeader`` then ``CodesChunk``\\ s):
AlignedVQ indices, and the raw fp16 and per-token int8 baselines. The fourth way to ask,
``image`` (``common.wire.modes.IMAGE_MODE``), uploads the picture itself: the cloud-only
baseline. Sizes of
requests are never computed from a formula: :func:`wire_bytes` serialises the messages and
counts.
"""

from __future__ import annotations

import numpy as np
import torch

from alignedvq.v1 import inference_pb2 as pb
from common.codec.aligned_vq import AlignedVQ
from common.wire.modes import ALIGNEDVQ, FEATURE_MODES, FP16, INT8
from common.wire.packing import pack, packed_size, unpack


class PayloadError(ValueError):
    """The messages do not describe features this cloud can decode."""


class FeatureEncoding:
    encoding: int
    bits = 0
    stages = 1

    def __init__(self, tokens: int, dim: int):
        self.tokens, self.dim = tokens, dim

    def encode(self, features: torch.Tensor) -> list[bytes]:
        """One image's features (T, D) -> chunk payloads."""
        raise NotImplementedError

    def encode_batch(self, features: torch.Tensor) -> list[list[bytes]]:
        """Features (B, T, D) -> each image's chunk payloads."""
        return [self.encode(f) for f in features]

    def payload_size(self) -> int:
        """Bytes of the chunk payloads of one image (messages' framing excluded)."""
        return sum(self.chunk_size(s) for s in range(self.stages))

    def decode(self, chunks: list[bytes]) -> torch.Tensor:
        """Chunk payloads -> features (T, D) float32; raises PayloadError on anything malformed."""
        raise NotImplementedError

    def chunk_size(self, stage: int) -> int:
        raise NotImplementedError

    def _check(self, chunks: list[bytes]) -> None:
        if len(chunks) != self.stages:
            raise PayloadError(f"expected {self.stages} chunk(s), got {len(chunks)}")
        for s, c in enumerate(chunks):
            if len(c) != self.chunk_size(s):
                raise PayloadError(f"chunk {s} holds {len(c)} bytes, expected "
                                   f"{self.chunk_size(s)} for {self.tokens} tokens")


class AlignedVQEncoding(FeatureEncoding):
    encoding = pb.FEATURE_ENCODING_ALIGNEDVQ

    def __init__(self, codec: AlignedVQ):
        # Tokens on the wire: the codec's coded ones (decode gives every token at the cut).
        super().__init__(codec.config.coded_tokens, codec.config.feature_dim)
        self.codec = codec
        self.bits, self.stages = codec.config.bits, codec.config.stages

    def chunk_size(self, stage: int) -> int:
        return packed_size(self.tokens, self.bits)

    def encode_batch(self, features: torch.Tensor) -> list[list[bytes]]:
        idx = self.codec.encode(features).cpu().numpy()
        return [[pack(img[:, s], self.bits) for s in range(self.stages)] for img in idx]

    def encode(self, features: torch.Tensor) -> list[bytes]:
        return self.encode_batch(features[None])[0]

    def decode(self, chunks: list[bytes]) -> torch.Tensor:
        self._check(chunks)
        try:
            idx = np.stack([unpack(c, self.tokens, self.bits, self.codec.config.codebook_size)
                            for c in chunks], -1)
        except ValueError as e:
            raise PayloadError(str(e)) from None
        return self.codec.decode(torch.from_numpy(idx)[None])[0]


class Fp16Encoding(FeatureEncoding):
    encoding = pb.FEATURE_ENCODING_FP16

    def chunk_size(self, stage: int) -> int:
        return self.tokens * self.dim * 2

    def encode(self, features: torch.Tensor) -> list[bytes]:
        return [features.float().cpu().numpy().astype("<f2").tobytes()]

    def decode(self, chunks: list[bytes]) -> torch.Tensor:
        self._check(chunks)
        x = np.frombuffer(chunks[0], dtype="<f2").astype(np.float32)
        if not np.isfinite(x).all():
            raise PayloadError("fp16 features hold NaN or infinity")
        return torch.from_numpy(x.reshape(self.tokens, self.dim))


class Int8Encoding(FeatureEncoding):
    """Symmetric per-token int8: scale = max|x| / 127, sent as fp16 before the token's values."""

    encoding = pb.FEATURE_ENCODING_INT8

    def chunk_size(self, stage: int) -> int:
        return self.tokens * (2 + self.dim)

    def encode(self, features: torch.Tensor) -> list[bytes]:
        x = features.float().cpu().numpy()
        scale = (np.abs(x).max(-1, keepdims=True) / 127.0).astype("<f2")
        safe = np.where(scale.astype(np.float32) > 0, scale.astype(np.float32), 1.0)
        q = np.clip(np.round(x / safe), -127, 127).astype(np.int8)
        rows = np.concatenate([scale.view(np.uint8).reshape(self.tokens, 2),
                               q.view(np.uint8)], axis=1)
        return [rows.tobytes()]

    def decode(self, chunks: list[bytes]) -> torch.Tensor:
        self._check(chunks)
        rows = np.frombuffer(chunks[0], dtype=np.uint8).reshape(self.tokens, 2 + self.dim)
        scale = rows[:, :2].copy().view("<f2").astype(np.float32)
        if not np.isfinite(scale).all():
            raise PayloadError("int8 scales hold NaN or infinity")
        q = rows[:, 2:].copy().view(np.int8).astype(np.float32)
        return torch.from_numpy(q * scale)


_ENCODINGS: dict[str, type[FeatureEncoding]] = {
    ALIGNEDVQ: AlignedVQEncoding, FP16: Fp16Encoding, INT8: Int8Encoding}
_MODE_OF_WIRE = {cls.encoding: mode for mode, cls in _ENCODINGS.items()}


def mode_of_wire(encoding: int) -> str | None:
    """``CodesHeader.encoding`` -> feature mode name; None for a value this version lacks."""
    return _MODE_OF_WIRE.get(encoding)


def make_encoding(mode: str, codec: AlignedVQ | None, tokens: int, dim: int) -> FeatureEncoding:
    if mode == ALIGNEDVQ:
        if codec is None:
            raise ValueError("--mode alignedvq needs a codec (--codec DIR)")
        return AlignedVQEncoding(codec)
    if mode in _ENCODINGS:
        return _ENCODINGS[mode](tokens, dim)
    raise ValueError(f"unknown feature mode {mode!r}; expected one of {FEATURE_MODES}")


def feature_encodings(codec: AlignedVQ | None, tokens: int, dim: int) -> dict[str, FeatureEncoding]:
    """Every mode a cloud with this codec (or none) decodes, in :data:`FEATURE_MODES` order:
    built once, looked up per request."""
    return {mode: make_encoding(mode, codec, tokens, dim) for mode in FEATURE_MODES
            if mode != ALIGNEDVQ or codec is not None}


def wire_bytes(messages) -> int:
    """Bytes of the serialised messages: what gRPC puts in its frames, excluding gRPC's own
    5-byte per-message prefix and HTTP/2 framing."""
    return sum(len(m.SerializeToString()) for m in messages)
