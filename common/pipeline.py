"""The two halves of the split model as the edge and the cloud run them, in any process.

Edge: image -> processor -> vision blocks [0, K) -> feature encoding -> request messages.
Cloud: request messages -> feature decoding -> vision blocks [K, F) -> projector -> LM -> text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.codec import AlignedVQ
from common.features import (ALIGNEDVQ, FEATURE_MODES, FeatureEncoding, PayloadError,
                             make_encoding, request_messages)
from common.llava_io import build_prompt, load_llava
from common.split import (CloudVision, EdgeVision, SplitPoint, features_at_cut,
                          merge_image_tokens, vision_fingerprint)

class EdgeHalf:
    """Holds the vision blocks before the cut and the encoder; no language-model weights."""

    def __init__(self, model_dir: str | Path, codec_dir: str | Path | None = None,
                 mode: str = "alignedvq", split_layer: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        from transformers import AutoImageProcessor

        self.mode = mode
        self.vision = EdgeVision.from_pretrained(model_dir, split_layer, device, dtype)
        self.split = self.vision.split
        self.image_processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        self.tokens = self.split.tokens(self.vision.config.vision_config)
        self.codec = None
        if mode == ALIGNEDVQ:
            # On the vision tower's device: the features it encodes come from there.
            self.codec = AlignedVQ.load(codec_dir, expect_fingerprint=self.vision.fingerprint,
                                        expect_split_layer=self.split.split_layer).to(device)
        self.encoding = make_encoding(mode, self.codec, self.tokens,
                                      self.vision.config.vision_config.hidden_size)
        self.codec_fingerprint = self.codec.fingerprint() if self.codec else ""

    def features(self, images) -> torch.Tensor:
        return features_at_cut(self.vision, self.image_processor, images)

    def chunks(self, images) -> list[list[bytes]]:
        return self.encode(self.features(images))

    def encode(self, feats: torch.Tensor) -> list[list[bytes]]:
        """Features (B, T, D) -> each image's chunk payloads."""
        return self.encoding.encode_batch(feats)

    def messages(self, chunks: list[bytes], question: str = "", max_new_tokens: int = 0):
        return request_messages(self.encoding, chunks, self.vision.fingerprint,
                                self.codec_fingerprint, question, max_new_tokens)


class CloudHalf:
    """Holds the vision blocks after the cut, the projector, the language model and a decoder."""

    def __init__(self, model_dir: str | Path, codec_dir: str | Path | None = None,
                 split_layer: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.model, self.processor = load_llava(model_dir, device, dtype)
        self.split = SplitPoint.from_config(self.model.config, split_layer)
        self.vision_fingerprint = vision_fingerprint(Path(model_dir), self.split)
        self.tokens = self.split.tokens(self.model.config.vision_config)
        self.dim = self.model.config.vision_config.hidden_size
        self.vision = CloudVision.take_from(self.model, self.split)
        self.codec = None
        if codec_dir is not None:
            self.codec = AlignedVQ.load(codec_dir, expect_fingerprint=self.vision_fingerprint,
                                        expect_split_layer=self.split.split_layer)
        self.codec_fingerprint = self.codec.fingerprint() if self.codec else ""
        self.image_tokens = self.split.image_tokens(self.model.config.vision_config)

    def encoding(self, mode: str) -> FeatureEncoding:
        return make_encoding(mode, self.codec, self.tokens, self.dim)

    def decode(self, mode: str, chunks: list[bytes]) -> torch.Tensor:
        return self.encoding(mode).decode(chunks)

    def prompt(self, question: str) -> str:
        """The chat-template prompt with ``<image>`` expanded to one token per image feature, as
        the processor does when it is given pixels (the cloud never is)."""
        token = self.processor.image_token
        return build_prompt(self.processor, question).replace(token, token * self.image_tokens)

    @torch.inference_mode()
    def image_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """Features at the cut (B, T, D) -> LLaVA image embeddings (B, image_tokens, lm_hidden):
        the remaining vision blocks and the projector, what ``get_image_features`` returns."""
        return self.vision(features.to(self.model.device))

    @torch.inference_mode()
    def answer(self, features: torch.Tensor, questions: list[str], max_new_tokens: int = 8,
               streamer=None) -> list[str]:
        """Greedy answers from features at the cut (B, T, D), one question each. A transformers
        streamer, if given, receives the new token ids as they are generated."""
        tok = self.processor.tokenizer
        inputs = tok([self.prompt(q) for q in questions], padding=True,
                     return_tensors="pt").to(self.model.device)
        embeds = merge_image_tokens(self.model, inputs.input_ids, self.image_embeddings(features))
        out = self.model.generate(inputs_embeds=embeds, attention_mask=inputs.attention_mask,
                                  max_new_tokens=max_new_tokens, do_sample=False,
                                  streamer=streamer)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]


__all__ = ["EdgeHalf", "CloudHalf", "PayloadError", "FEATURE_MODES"]
