"""What the server needs of the cloud's share of the model, whichever it holds: the whole cloud
half with its language model (:class:`cloud_server.cloud_half.CloudHalf`, the builtin engine) or
the half without it (:class:`cloud_server.projector_half.ProjectorHalf`, for an engine that runs
the language model in its own process, vLLM). Both satisfy :class:`CloudPreparer`: ProjectorHalf
(and so CloudHalf) subclasses it, and tests/test_halves.py checks that each member is provided,
not inherited from the protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from cloud_server.split_points import ServedSplit
from common.codec.aligned_vq import AlignedVQ
from common.codec.encodings import FeatureEncoding
from common.split.point import SplitPoint


@runtime_checkable
class CloudPreparer(Protocol):
    split: SplitPoint
    tokens: int               # tokens that cross the wire
    dim: int                  # their width (the vision tower's hidden size)
    image_tokens: int         # image tokens in the language model's prompt
    text_hidden_size: int     # the language model's width (image embeddings' last axis)
    image_size: int           # the side of the model's input square
    patch_size: int
    model_id: str             # the checkpoint folder's name
    vision_fingerprint: str
    codec: AlignedVQ | None
    codec_fingerprint: str    # "" without a codec
    processor: object         # the checkpoint's processor: tokenizer and chat template
    encodings: dict[str, FeatureEncoding]  # every mode it decodes, built once
    device: torch.device      # where its vision blocks and projector run
    dtype: torch.dtype

    # Every split point served, by split layer (cloud_server/split_points.py); the fields above
    # describe the default one, which ``split_layer=None`` below means.
    points: dict[int, ServedSplit]
    default_point: ServedSplit

    def point(self, split_layer: int | None = None) -> ServedSplit:
        """The split point at ``split_layer``; KeyError when it is not served."""

    def decode(self, mode: str, chunks: list[bytes],
               split_layer: int | None = None) -> torch.Tensor:
        """One request's chunk payloads -> features at the cut (T, D); PayloadError if bad."""

    def image_embeddings(self, features: torch.Tensor,
                         split_layer: int | None = None) -> torch.Tensor:
        """Features at the cut (B, T, D) -> LLaVA image embeddings (B, image_tokens, hidden)."""
