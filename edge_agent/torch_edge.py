"""The torch edge: the vision blocks before the cut and a feature encoder, from a local
checkpoint. Image -> processor -> vision blocks [0, K) -> feature encoding -> request messages.
No language-model weight is read."""

from __future__ import annotations

from pathlib import Path

import torch

from common.codec.aligned_vq import AlignedVQ, codec_split_layer
from common.codec.encodings import make_encoding
from common.split.checkpoint import load_image_processor
from common.split.vision import EdgeVision, features_at_cut
from common.wire.messages import codes_request_messages
from common.wire.modes import ALIGNEDVQ
from edge_agent.encoder import EdgeEncoder


class EdgeHalf(EdgeEncoder):
    """Holds the vision blocks before the cut and the encoder; no language-model weights."""

    def __init__(self, model_dir: str | Path, codec_dir: str | Path | None = None,
                 mode: str = "alignedvq", split_layer: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.mode = mode
        if mode == ALIGNEDVQ:  # cut where the codec was trained, unless told (then checked)
            split_layer = codec_split_layer(codec_dir, split_layer)
        self.vision = EdgeVision.from_pretrained(model_dir, split_layer, device, dtype)
        self.split = self.vision.split
        self.image_processor = load_image_processor(model_dir)
        self.tokens = self.split.tokens(self.vision.config.vision_config)
        self.codec = None
        if mode == ALIGNEDVQ:
            # On the vision tower's device: the features it encodes come from there.
            self.codec = AlignedVQ.load(codec_dir, expect_fingerprint=self.vision.fingerprint,
                                        expect_split_layer=self.split.split_layer).to(device)
        self.encoding = make_encoding(mode, self.codec, self.tokens,
                                      self.vision.config.vision_config.hidden_size)
        self.codec_fingerprint = self.codec.fingerprint() if self.codec else ""
        self.vision_fingerprint = self.vision.fingerprint
        self.split_layer = self.split.split_layer
        self.image_size = self.vision.config.vision_config.image_size

    def chunks(self, images) -> list[list[bytes]]:
        return self.encoding.encode_batch(features_at_cut(self.vision, self.image_processor,
                                                          images))

    def messages(self, chunks: list[bytes], question: str = "", max_new_tokens: int = 0):
        enc = self.encoding
        return codes_request_messages(enc.encoding, enc.tokens, enc.bits, enc.stages, chunks,
                                      self.vision_fingerprint, self.codec_fingerprint, question,
                                      max_new_tokens)
