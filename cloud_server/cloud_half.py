"""The cloud half with its language model (the builtin engine's and the offline evaluation's):
request payloads -> feature decoding -> vision blocks [K, F) -> projector -> language model."""

from __future__ import annotations

from pathlib import Path

import torch

from common.codec.aligned_vq import AlignedVQ
from common.codec.encodings import FeatureEncoding, make_encoding
from common.split.checkpoint import build_prompt, load_llava
from common.split.point import SplitPoint
from common.split.vision import CloudVision
from common.split.weights import vision_fingerprint


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
        self.text_hidden_size = self.model.config.text_config.hidden_size
        self.image_size = self.model.config.vision_config.image_size
        self.patch_size = self.model.config.vision_config.patch_size
        self.model_id = self.model.config.name_or_path.rstrip("/").split("/")[-1] or str(model_dir)

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


def merge_image_tokens(model, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
    """``inputs_embeds`` with the image tokens replaced by the projected features, in order:
    what ``LlavaModel.forward`` does with ``get_image_features``' output, through its own
    ``get_placeholder_mask`` (transformers 5.19; it raises ValueError on a count mismatch)."""
    embeds = model.get_input_embeddings()(input_ids)
    image_features = image_features.to(embeds.device, embeds.dtype)
    mask = model.model.get_placeholder_mask(input_ids, inputs_embeds=embeds,
                                            image_features=image_features)
    return embeds.masked_scatter(mask, image_features)
