"""The committed embedded model is a real HF LLaVA checkpoint that loads offline."""

import json
import os
import subprocess
import sys

import pytest

from alignedvq.evaluation.answers import is_correct
from alignedvq.evaluation.evaluate import answer_batch
from cloud_server.language_model import build_prompt
from common.imaging.policy import open_image
from common.paths import DEFAULT_MODEL_DIR, SAMPLES_DIR


@pytest.mark.integration
def test_loads_offline_through_transformers_in_a_fresh_process():
    code = (
        "import sys, torch\n"
        "from transformers import AutoProcessor, LlavaForConditionalGeneration\n"
        "m = LlavaForConditionalGeneration.from_pretrained(sys.argv[1])\n"
        "p = AutoProcessor.from_pretrained(sys.argv[1])\n"
        "print(type(m).__name__, type(p).__name__, m.config.vision_config.model_type,"
        " m.config.text_config.model_type)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code, str(DEFAULT_MODEL_DIR)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LlavaForConditionalGeneration", "LlavaProcessor",
                                  "clip_vision_model", "llama"]


def test_size_budget():
    total = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file())
    assert total <= 20 * 1024 * 1024, total


def test_llava15_prompt_and_real_patch_grid(embedded_model):
    model, processor = embedded_model
    prompt = build_prompt(processor, "how many objects are there?")
    assert prompt == "USER: <image>\nhow many objects are there? ASSISTANT:"
    image = open_image(SAMPLES_DIR / "images" / "sample0.png")
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    n_image_tokens = int((inputs.input_ids == model.config.image_token_id).sum())
    assert n_image_tokens >= 64
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert n_image_tokens == grid * grid


def test_answers_the_shipped_samples(embedded_model):
    model, processor = embedded_model
    rows = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]
    answers = answer_batch(model, processor, [open_image(SAMPLES_DIR / r["image"]) for r in rows],
                           [r["question"] for r in rows])
    assert sum(is_correct(a, r["answer"]) for a, r in zip(answers, rows)) >= len(rows) - 1, answers


def test_saved_in_the_llava15_hf_key_layout(tmp_path):
    """vLLM (and other llava-1.5 tools) load only llava-1.5-hf's names: vision_tower.vision_model.*"""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from alignedvq.training.checkpoint_layout import rewrite_to_llava15_layout

    with safe_open(str(DEFAULT_MODEL_DIR / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        vision = [k for k in keys if "vision" in k]
        assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)
        # The flattened names transformers 5 writes for a model built from a config are rewritten.
        flat = {"vision_tower." + k[len("vision_tower.vision_model."):]: f.get_tensor(k)
                for k in vision[:3]}
        flat["language_model.lm_head.weight"] = f.get_tensor("language_model.lm_head.weight")
    save_file(flat, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert rewrite_to_llava15_layout(tmp_path) == 3
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(vision[:3] + ["language_model.lm_head.weight"])
    assert rewrite_to_llava15_layout(tmp_path) == 0
