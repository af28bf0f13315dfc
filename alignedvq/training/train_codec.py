"""``alignedvq train-codec``: learn an AlignedVQ codec for a frozen LLaVA at one split point.

1. Features at the cut are computed once for every image of the dataset (the model is frozen).
2. Initialisation: the down-projection is the PCA of the aligned features, each stage's codebook
   is k-means on what the previous stages leave (so no code starts dead).
3. Training: feature reconstruction + VQ codebook/commitment losses + task-aware distillation:
   the answer-token distribution of the quantized path (decoded features -> the frozen cloud
   half) is pulled towards the original model's, gradients reaching the encoder through a
   straight-through estimator. Codes unused for a while are re-seeded from live features.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from alignedvq.data.datasets import read_questions
from cloud_server.cloud_half import CloudHalf, merge_image_tokens
from common.codec.aligned_vq import AlignedVQ, CodecConfig
from common.imaging.policy import open_image
from common.split.checkpoint import load_image_processor
from common.split.vision import EdgeVision, features_at_cut


def answer_batch_ids(cloud: CloudHalf, questions: list[str], answers: list[str]):
    """Right-padded prompt+answer ids, and the positions whose logits predict answer tokens."""
    tok = cloud.processor.tokenizer
    seqs, targets = [], []
    for q, a in zip(questions, answers):
        p_ids = tok(cloud.prompt(q)).input_ids
        a_ids = tok(" " + a, add_special_tokens=False).input_ids + [tok.eos_token_id]
        seqs.append(p_ids + a_ids)
        targets.append(list(range(len(p_ids) - 1, len(p_ids) + len(a_ids) - 1)))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    rows = torch.tensor([i for i, t in enumerate(targets) for _ in t])
    cols = torch.tensor([c for t in targets for c in t])
    return ids, mask, rows, cols


def answer_logits(cloud: CloudHalf, feats, ids, mask, rows, cols):
    image_features = cloud.vision(feats)  # with gradients (image_embeddings has none)
    embeds = merge_image_tokens(cloud.model, ids, image_features)
    logits = cloud.model(inputs_embeds=embeds, attention_mask=mask).logits
    return logits[rows, cols].float()


def train_codec(model_dir: Path, dataset: Path, out: Path, bits: int = 12, stages: int = 1,
                split_layer: int | None = None, code_dim: int = 32, steps: int = 1500,
                batch: int = 32, lr: float = 1e-3, distill_weight: float = 1.0,
                seed: int = 0, max_images: int | None = None) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.monotonic()
    rows = read_questions(dataset, max_images)
    root = Path(dataset).resolve().parent
    edge = EdgeVision.from_pretrained(model_dir, split_layer)
    cloud = CloudHalf(model_dir, split_layer=split_layer, vision_fingerprint=edge.fingerprint)
    # Only the codec learns; the cloud's vision blocks and projector sit outside cloud.model.
    for p in [*cloud.model.parameters(), *cloud.vision.parameters()]:
        p.requires_grad_(False)
    image_processor = load_image_processor(model_dir)
    feats = []
    for i in tqdm(range(0, len(rows), 64), desc="features at the cut", unit="batch"):
        images = [open_image(root / r["image"]) for r in rows[i:i + 64]]
        feats.append(features_at_cut(edge, image_processor, images))
    feats = torch.cat(feats).float()
    questions = [r["question"] for r in rows]
    answers = [r["answer"] if isinstance(r["answer"], str) else r["answer"][0] for r in rows]

    config = CodecConfig(feature_dim=feats.shape[-1], code_dim=code_dim, bits=bits,
                         stages=stages, tokens=feats.shape[1], split_layer=edge.split.split_layer,
                         vision_fingerprint=edge.fingerprint, model_id=Path(model_dir).name)
    codec = AlignedVQ(config)
    codec.initialise(feats, seed)
    opt = torch.optim.Adam(codec.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    variance = feats.var()
    usage = torch.zeros(stages, config.codebook_size)
    history = []
    bar = tqdm(range(1, steps + 1), desc="codec training", unit="step")
    for step in bar:
        idx = [rng.randrange(len(rows)) for _ in range(batch)]
        x = feats[idx]
        x_hat, codebook_loss, commit_loss = codec(x)
        recon = F.mse_loss(x_hat, x) / variance
        loss = recon + codebook_loss + 0.25 * commit_loss
        if distill_weight:
            ids, mask, r, c = answer_batch_ids(cloud, [questions[i] for i in idx],
                                               [answers[i] for i in idx])
            with torch.no_grad():
                teacher = answer_logits(cloud, x, ids, mask, r, c).log_softmax(-1)
            student = answer_logits(cloud, x_hat, ids, mask, r, c).log_softmax(-1)
            distill = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
            loss = loss + distill_weight * distill
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            used = codec.encode(x).reshape(-1, stages)
            for s in range(stages):
                usage[s] *= 0.99
                usage[s].index_add_(0, used[:, s], torch.ones(len(used)))
            if step % 100 == 0 and step < steps * 0.8:
                codec.expire_dead_codes(x, usage, rng)
        bar.set_postfix(recon=f"{recon.item():.3f}",
                        distill=f"{distill.item():.4f}" if distill_weight else "-")
        if step % 100 == 0 or step == steps:
            history.append({"step": step, "recon": round(recon.item(), 4),
                            "distill": round(distill.item(), 5) if distill_weight else None})
    codec.eval()
    codec.save(out)
    log = {"config": config.__dict__, "images": len(rows), "steps": steps, "batch": batch,
           "lr": lr, "distill_weight": distill_weight, "seed": seed, "history": history,
           "minutes": round((time.monotonic() - started) / 60, 1),
           "codes_used": [int((u > 0.01).sum()) for u in usage]}
    (Path(out) / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log
