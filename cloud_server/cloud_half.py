"""The cloud half with its language model (the builtin engine's and the offline evaluation's):
request payloads -> feature decoding -> vision blocks [K, F) -> projector -> language model."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cloud_server.language_model import build_prompt, load_chat_processor, load_language_model
from cloud_server.projector_half import ProjectorHalf


class CloudHalf(ProjectorHalf):
    """:class:`ProjectorHalf` (decoder, vision blocks after the cut, projector) and the language
    model. ``model`` is a transformers ``LlavaForConditionalGeneration`` built without a vision
    tower or projector: their weights are never read here."""

    load_processor = staticmethod(load_chat_processor)

    def __init__(self, model_dir: str | Path, codecs: Sequence[str | Path] | str | Path | None = (),
                 split_layer: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32,
                 vision_fingerprints: dict[int, str] | None = None):
        super().__init__(model_dir, codecs, split_layer, device, dtype, vision_fingerprints)
        self.model = load_language_model(model_dir, device, dtype)

    def prompt(self, question: str, history=()) -> str:
        """The chat-template prompt with ``<image>`` expanded to one token per image feature, as
        the processor does when it is given pixels (the cloud never is). ``history``: earlier
        (question, answer) turns of the conversation, asked before ``question``."""
        token = self.processor.image_token
        return build_prompt(self.processor, question, history).replace(
            token, token * self.image_tokens)

    @torch.inference_mode()
    def answer(self, features: torch.Tensor, questions: list[str], max_new_tokens: int = 8,
               streamer=None, histories=None) -> list[str]:
        """Greedy answers from features at the cut (B, T, D), one question each. A transformers
        streamer, if given, receives the new token ids as they are generated. ``histories``: one
        sequence of earlier (question, answer) turns per question (default: none)."""
        tok = self.processor.tokenizer
        histories = histories or [()] * len(questions)
        inputs = tok([self.prompt(q, h) for q, h in zip(questions, histories, strict=True)],
                     padding=True, return_tensors="pt").to(self.device)
        embeds = merge_image_tokens(self.model, inputs.input_ids, self.image_embeddings(features))
        out = self.model.generate(inputs_embeds=embeds, attention_mask=inputs.attention_mask,
                                  max_new_tokens=max_new_tokens, do_sample=False,
                                  streamer=streamer)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]


def merge_image_tokens(model, input_ids: torch.Tensor,
                       image_features: torch.Tensor) -> torch.Tensor:
    """``inputs_embeds`` with the image tokens replaced by the projected features, in order:
    what ``LlavaModel.forward`` does with ``get_image_features``' output, through its own
    ``get_placeholder_mask`` (transformers 5.19; it raises ValueError on a count mismatch)."""
    embeds = model.get_input_embeddings()(input_ids)
    image_features = image_features.to(embeds.device, embeds.dtype)
    mask = model.model.get_placeholder_mask(input_ids, inputs_embeds=embeds,
                                            image_features=image_features)
    return embeds.masked_scatter(mask, image_features)
