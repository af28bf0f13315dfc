"""The unmodified model, pixels in: the reference every split mode is scored against."""

from __future__ import annotations

from pathlib import Path

import torch

from cloud_server.language_model import build_prompt, load_chat_processor
from common.split.checkpoint import check_checkpoint


def load_llava(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Model and processor from a local HF-format folder; never touches a model hub."""
    from transformers import LlavaForConditionalGeneration

    check_checkpoint(Path(model_dir))
    processor = load_chat_processor(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(
        model_dir, dtype=dtype, local_files_only=True).to(device).eval()
    return model, processor


@torch.inference_mode()
def answer_batch(model, processor, images: list, questions: list[str],
                 max_new_tokens: int = 8, histories=None) -> list[str]:
    """Greedy answers of the unmodified model for a batch of (image, question) pairs;
    ``histories``: one sequence of earlier (question, answer) turns per question (default:
    none), put before it in the prompt."""
    histories = histories or [()] * len(questions)
    prompts = [build_prompt(processor, q, h)
               for q, h in zip(questions, histories, strict=True)]
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]
