"""train-codec at scale: every gpt turn distilled, the step-defined data order, an exact
resume, DDP matching one process, and clean errors for bad data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alignedvq.training.codec_data import StepOrder
from alignedvq.training.conversation_tokens import ConversationTokenizer
from common.paths import DEFAULT_MODEL_DIR
from common.split.checkpoint import load_processor

SAMPLES = DEFAULT_MODEL_DIR.parent / "samples"
TWO_TURNS = [("<image>\nwhat color is the triangle?", "red"),
             ("how many objects are there?", "three")]


@pytest.fixture(scope="module")
def tokenizer():
    return ConversationTokenizer(load_processor(DEFAULT_MODEL_DIR), image_tokens=64)


@pytest.mark.unit
def test_every_gpt_turn_is_a_distillation_target(tokenizer):
    tokens = tokenizer(TWO_TURNS)
    tok = tokenizer.tokenizer
    # Logits at p predict token p + 1: the predicted tokens are each answer, then what ends
    # its turn ("USER" before the next question; nothing after the last).
    predicted = [tok.convert_ids_to_tokens(tokens.ids[p + 1]) if p + 1 < len(tokens.ids)
                 else None for p in tokens.targets]
    assert predicted == ["red", "USER", "three", None]


@pytest.mark.unit
def test_one_turn_is_the_prompt_the_model_answers_then_the_answer(tokenizer):
    from cloud_server.language_model import build_prompt

    processor = tokenizer.processor
    prompt = build_prompt(processor, "what color is the triangle?").replace(
        processor.image_token, processor.image_token * 64)
    prompt_ids = processor.tokenizer(prompt).input_ids
    tokens = tokenizer([("what color is the triangle?", "red")])
    answer_ids = processor.tokenizer("red", add_special_tokens=False).input_ids
    assert tokens.ids == prompt_ids + answer_ids
    assert tokens.targets == list(range(len(prompt_ids) - 1, len(tokens.ids)))


@pytest.mark.unit
def test_the_data_order_is_a_function_of_the_step():
    def first(order, k):
        it = iter(order)
        return [next(it) for _ in range(k)]

    single = first(StepOrder(10, 4, 1, 0, seed=3), 6)        # 2 steps an epoch
    rank0 = first(StepOrder(10, 2, 2, 0, seed=3), 6)
    rank1 = first(StepOrder(10, 2, 2, 1, seed=3), 6)
    assert [a + b for a, b in zip(rank0, rank1)] == single   # the ranks split each batch
    assert all(len(set(b)) == 4 for b in single)
    assert first(StepOrder(10, 4, 1, 0, seed=3, start=4), 2) == single[4:6]   # resume
    assert single[:2] != single[2:4]                         # a new order each epoch


def llava_dataset(tmp_path: Path, conversations: int = 12) -> Path:
    """LLaVA's instruction format, two gpt turns each, over the shipped sample images."""
    images = sorted((SAMPLES / "images").iterdir())
    entries = [{"id": f"{i:04d}", "image": f"images/{images[i % len(images)].name}",
                "conversations": [
                    {"from": "human", "value": TWO_TURNS[0][0]},
                    {"from": "gpt", "value": TWO_TURNS[0][1]},
                    {"from": "human", "value": TWO_TURNS[1][0]},
                    {"from": "gpt", "value": TWO_TURNS[1][1]}]}
               for i in range(conversations)]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(entries))
    return path


def tiny_run(tmp_path, out, **overrides):
    from alignedvq.training.train_codec import CodecTraining

    settings = dict(model_dir=DEFAULT_MODEL_DIR, dataset=llava_dataset(tmp_path),
                    image_folder=SAMPLES, out=tmp_path / out, bits=4, steps=6, batch=4,
                    held_out=4, eval_every=3, save_every=100, log_every=3, init_images=8,
                    workers=0, progress=False)
    return CodecTraining(**{**settings, **overrides})


@pytest.mark.integration
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    from alignedvq.training.train_codec import train_codec

    whole = train_codec(tiny_run(tmp_path, "whole"))
    assert whole["format"] == "llava" and whole["history"][-1]["distill"] > 0
    stopped = train_codec(tiny_run(tmp_path, "halves", stop_at=3))
    assert stopped["stopped_at"] == 3
    assert (tmp_path / "halves" / "checkpoint" / "state.pt").exists()
    train_codec(tiny_run(tmp_path, "halves", resume=True))
    a = load_file(tmp_path / "whole" / "codec.safetensors")
    b = load_file(tmp_path / "halves" / "codec.safetensors")
    assert {k: (a[k] - b[k]).abs().max().item() for k in a} == {k: 0.0 for k in a}
    assert not (tmp_path / "halves" / "checkpoint").exists()   # removed once done
    events = [json.loads(line)["event"]
              for line in (tmp_path / "halves" / "training_log.jsonl").read_text().splitlines()]
    assert events.count("stopped") == 1 and events.count("resumed") == 1
    train_codec(tiny_run(tmp_path, "mismatch", stop_at=3))
    with pytest.raises(ValueError, match="bits: checkpoint '4', now '5'"):
        train_codec(tiny_run(tmp_path, "mismatch", resume=True, bits=5))


def train_codec_command(tmp_path, out, *extra):
    dataset = llava_dataset(tmp_path)
    return ["--dataset", str(dataset), "--image-folder", str(SAMPLES), "--out",
            str(tmp_path / out), "--bits", "4", "--steps", "6", "--batch", "4",
            "--held-out", "4", "--eval-every", "6", "--log-every", "2", "--init-images", "8",
            "--workers", "0", "--threads", "1", "--quiet", *extra]


def logged(folder: Path, event: str) -> list[dict]:
    lines = (folder / "training_log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


@pytest.mark.integration
def test_two_processes_under_torchrun_train_what_one_does(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "alignedvq.cli", "train-codec",
                          *train_codec_command(tmp_path, "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2",
                          "-m", "alignedvq.cli", "train-codec",
                          *train_codec_command(tmp_path, "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "training_log.json").read_text())["processes"] == 2
    # The same global batches and gradients: the curves agree up to float summation order.
    for event in ("train", "held_out"):
        for a, b in zip(logged(tmp_path / "one", event), logged(tmp_path / "two", event),
                        strict=True):
            for key in ("recon", "distill", "agreement"):
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (event, key)


@pytest.mark.integration
def test_a_bad_dataset_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "question": "q?", "answer": "a"}\n{not json\n')
    run = subprocess.run([sys.executable, "-m", "alignedvq.cli", "train-codec", "--dataset",
                          str(bad), "--out", str(tmp_path / "c")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "bad.jsonl:2" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.unit
def test_a_codec_to_fine_tune_must_have_the_runs_geometry(tmp_path):
    from alignedvq.training.train_codec import warm_start
    from common.codec.aligned_vq import AlignedVQ, CodecConfig, CodecMismatchError

    config = CodecConfig(feature_dim=16, code_dim=4, bits=4, stages=1, tokens=8, split_layer=2,
                         vision_fingerprint="ab" * 8)
    AlignedVQ(config).save(tmp_path / "c")
    assert warm_start(tmp_path / "c", config).config.bits == 4
    with pytest.raises(ValueError, match="bits 4 vs 5"):
        warm_start(tmp_path / "c", CodecConfig(**{**config.__dict__, "bits": 5}))
    with pytest.raises(CodecMismatchError, match="fingerprint"):
        warm_start(tmp_path / "c", CodecConfig(**{**config.__dict__,
                                                   "vision_fingerprint": "cd" * 8}))
