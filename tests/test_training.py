"""The training recipe's data path matches what the processor does at inference time."""

import random

import numpy as np
import torch

from alignedvq.data import shapes_vqa as spec
from alignedvq.training import tiny_llava
from alignedvq.training.train_model import (
    Phase,
    SequenceBuilder,
    build_pool,
    normalize,
    train,
)
from cloud_server.language_model import build_prompt


def test_fast_normalisation_equals_the_processor():
    processor = tiny_llava.build_processor(tiny_llava.build_tokenizer())
    pool = build_pool(8, seed=1)
    images = [spec.render(s, antialias=i % 2 == 1) for i, s in enumerate(pool.scenes)]
    expected = processor.image_processor(images=images, return_tensors="pt").pixel_values
    ours = normalize(torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1)
                                  for im in images]))
    assert torch.allclose(ours, expected, atol=1e-6)


def test_first_turn_equals_the_processors_prompt():
    processor = tiny_llava.build_processor(tiny_llava.build_tokenizer())
    builder = SequenceBuilder(processor, num_image_tokens=64)
    scene = spec.sample_scene(random.Random(0))
    questions = spec.sample_questions(scene, 3, random.Random(1))
    ids, labels = builder.conversation(questions)
    prompt = build_prompt(processor, questions[0].question)
    expected = processor(images=[spec.render(scene)], text=[prompt]).input_ids[0]
    assert ids[:len(expected)] == list(expected)
    supervised = [t for t, lab in zip(ids, labels) if lab != -100]
    answer_ids = []
    for q in questions:
        answer_ids += builder.ids(q.answer) + [processor.tokenizer.eos_token_id]
    assert supervised == answer_ids


def test_patch_labels_name_the_object_underneath():
    pool = build_pool(20, seed=2)
    colors = list(spec.COLORS)
    for i, scene in enumerate(pool.scenes):
        for obj in scene.objects:
            p = int(obj.cy) // 16 * 8 + int(obj.cx) // 16
            assert pool.patch_color[i, p] == 1 + colors.index(obj.color)


def test_a_short_training_run_saves_a_loadable_checkpoint(tmp_path):
    from alignedvq.evaluation.evaluate import answer_batch
    from alignedvq.evaluation.original_model import load_llava

    phases = (Phase("frozen vision", 1e-3, 6, 3, False, 0), Phase("end to end", 5e-4, 2, 2, True, 1))
    # 16 held-out images instead of the recipe's 256: the run checks the mechanics (phases,
    # periodic and final evaluation, a checkpoint that loads), not what it learns.
    log = train(tmp_path, images=48, vision_minutes=0.02, phases=phases, eval_every=2,
                batch=4, questions_per_image=2, held_out=16)
    assert [(h["phase"], h["step"]) for h in log["history"]] == [
        ("frozen vision", 2), ("frozen vision", 3), ("end to end", 2)]
    model, processor = load_llava(tmp_path)
    answers = answer_batch(model, processor, [spec.render(build_pool(1, 5).scenes[0])],
                           ["how many objects are there?"])
    assert isinstance(answers[0], str)
