"""The cloud's language model: a LLaVA built without its vision side, the processor for batched
generation and the checkpoint's chat-template prompt."""

from __future__ import annotations

from pathlib import Path

import torch

from common.split.checkpoint import check_checkpoint, load_processor


def load_language_model(model_dir: str | Path, device: str = "cpu",
                        dtype: torch.dtype = torch.float32):
    """The checkpoint's language model as a LLaVA without its vision side: what the cloud half
    runs after its own vision blocks and projector
    (:class:`cloud_server.cloud_vision.CloudVision`)."""
    from transformers import LlavaForConditionalGeneration

    class LlavaWithoutVision(LlavaForConditionalGeneration):
        # The checkpoint's vision tower and projector are left on disk: transformers materialises
        # only the tensors the model has a place for, and these patterns keep the load report
        # quiet about the rest.
        _keys_to_ignore_on_load_unexpected = [r"vision_tower\.", r"multi_modal_projector\."]

        def __init__(self, config):
            # LlavaModel's constructor always builds both (transformers 5.19 has no option to
            # leave them out); from_pretrained builds on the meta device, so dropping them here,
            # before any weight is read, costs neither memory nor reads.
            super().__init__(config)
            self.model.vision_tower = None
            self.model.multi_modal_projector = None

    check_checkpoint(Path(model_dir))
    return LlavaWithoutVision.from_pretrained(
        model_dir, dtype=dtype, local_files_only=True,
        key_mapping=_library_key_renamings("llava")).to(device).eval()


def _library_key_renamings(model_type: str) -> dict[str, str]:
    """transformers' own renamings of older checkpoint layouts (llava-1.5-hf's original
    ``language_model.model.*``, the embedded tiny model's) for ``model_type``, as a
    ``key_mapping``. transformers applies them only to classes defined in its own package, so a
    subclass has to ask for them; without them ``lm_head`` would load as random weights."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return {source: target
            for renaming in get_checkpoint_conversion_mapping(model_type) or []
            for source, target in zip(renaming.source_patterns, renaming.target_patterns)}


def load_chat_processor(model_dir: str | Path):
    """The processor for batched generation: new tokens are appended on the right, so prompts
    are padded on the left."""
    processor = load_processor(model_dir)
    processor.tokenizer.padding_side = "left"
    return processor


# Where a question's text marks the image (LLaVA's instruction data: "<image>\nWhat is ...").
IMAGE_MARK = "<image>"


def conversation_messages(turns) -> list[dict]:
    """Chat-template messages for one image and ``turns``: (question, answer) pairs, the last
    answer ``None`` when the model is to answer it. The image goes where the first question's
    ``<image>`` mark is (before or after its text), or before the first question without one;
    later marks are dropped (one image per conversation)."""
    messages = []
    for i, (question, answer) in enumerate(turns):
        if i == 0:
            before, mark, after = question.partition(IMAGE_MARK)
            parts = [before.strip(), None, after.strip()] if mark else [None, question.strip()]
        else:
            parts = [question.replace(IMAGE_MARK, "").strip()]
        content = [{"type": "image"} if part is None else {"type": "text", "text": part}
                   for part in parts if part is None or part]
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant",
                             "content": [{"type": "text", "text": answer}]})
    return messages


def build_prompt(processor, question: str, history=()) -> str:
    """The checkpoint's own chat template (llava-1.5: ``USER: <image>\n{q} ASSISTANT:``), after
    the earlier ``history`` turns ((question, answer) pairs) when there are any."""
    conversation = conversation_messages([*history, (question, None)])
    return processor.apply_chat_template(conversation, add_generation_prompt=True)
