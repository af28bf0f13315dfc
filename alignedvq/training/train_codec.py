"""``alignedvq train-codec``: learn an AlignedVQ codec for a frozen LLaVA at one split point.

1. Initialisation, from a bounded streamed sample of tokens at the cut: the down-projection is
   the PCA of the aligned features, each stage's codebook k-means on what the previous stages
   leave (so no code starts dead).
2. Training: feature reconstruction + VQ codebook/commitment losses + task-aware distillation:
   at every assistant token of the conversation (every gpt turn of LLaVA's multi-turn data), the
   distribution of the quantized path (decoded features -> the frozen cloud half) is pulled
   towards the original model's, gradients reaching the encoder through a straight-through
   estimator. Codes unused for a while are re-seeded from live features.

Features at the cut are computed per batch on the training device from images streamed by
DataLoader workers (codec_data.py), so host memory does not grow with the dataset. Under
``torchrun`` every process trains a DDP replica on its slice of each global batch
(distributed.py). A checkpoint (codec, optimiser, schedule, step, RNG) is written every
``save_every`` steps and ``resume`` continues from it exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from alignedvq.data.datasets import DatasetError, read_dataset
from alignedvq.training import codec_data, resume
from alignedvq.training.conversation_tokens import ConversationTokenizer
from alignedvq.training.distributed import World, join
from common.codec.aligned_vq import AlignedVQ, CodecConfig
from common.split.checkpoint import load_image_processor
from common.split.vision import EdgeVision

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOG_FILE = "training_log.jsonl"


@dataclass
class CodecTraining:
    """Every setting of a run (the CLI's flags; docs/cli.md says what each one does)."""
    model_dir: Path
    dataset: Path
    out: Path
    bits: int = 12
    stages: int = 1
    split_layer: int | None = None
    code_dim: int = 32
    steps: int = 1500
    batch: int = 32                 # images per step, over all processes
    lr: float = 1e-3
    distill_weight: float = 1.0
    vision_weight: float = 0.0     # the image features the language model sees (needs distill)
    position_prior: bool = False
    context_layers: int = 0
    uncoded_cls: bool = False       # CLS not sent (needs position_prior; only where CLS crosses)
    seed: int = 0
    max_images: int | None = None
    image_folder: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"          # of the frozen model; the codec's weights stay float32
    workers: int = 2
    init_images: int = 2048         # images the initialisation samples tokens from
    init_tokens: int = 200_000      # tokens k-means and the PCA see (bounds its memory)
    init_from: Path | None = None   # a codec to start from instead of k-means (fine-tuning)
    held_out: int | None = None     # samples kept out for the periodic evaluation (None: auto)
    eval_every: int = 250
    save_every: int = 250
    log_every: int = 50
    resume: bool = False
    stop_at: int | None = None      # end this process after that step, with a checkpoint
    gradient_checkpointing: bool = False
    progress: bool = True

    def checkpoint_dir(self) -> Path:
        return Path(self.out) / "checkpoint"


class FrozenHalves:
    """The frozen model around the codec: the edge's blocks before the cut, and (when
    distilling) the cloud half with its language model, both in the run's dtype."""

    def __init__(self, run: CodecTraining, world: World):
        dtype = DTYPES[run.dtype]
        edge = EdgeVision.from_pretrained(run.model_dir, run.split_layer, world.device, dtype)
        cloud = None
        if run.distill_weight:
            from cloud_server.cloud_half import CloudHalf

            cloud = CloudHalf(run.model_dir, split_layer=run.split_layer,
                              device=str(world.device), dtype=dtype,
                              vision_fingerprints={edge.split.split_layer: edge.fingerprint})
        self._freeze(edge, cloud, world.device, dtype, run.gradient_checkpointing)
        self.image_processor = load_image_processor(run.model_dir)

    @classmethod
    def from_modules(cls, edge, cloud, device: torch.device, dtype: torch.dtype,
                     gradient_checkpointing: bool = False) -> FrozenHalves:
        """Halves already in memory, with no checkpoint folder (benchmarks/gpu_train.py builds
        llava-1.5-7b's geometry on the GPU directly). ``cloud``: anything with ``vision`` (the
        blocks after the cut and the projector) and ``model`` (the LLaVA language model), or
        None when not distilling."""
        halves = cls.__new__(cls)
        halves._freeze(edge, cloud, torch.device(device), dtype, gradient_checkpointing)
        halves.image_processor = None
        return halves

    def _freeze(self, edge, cloud, device: torch.device, dtype: torch.dtype,
                gradient_checkpointing: bool) -> None:
        self.device, self.dtype, self.edge, self.cloud = device, dtype, edge, cloud
        for p in edge.parameters():
            p.requires_grad_(False)
        if cloud is not None:
            # Only the codec learns; the cloud's vision blocks and projector sit outside
            # cloud.model.
            for p in [*cloud.model.parameters(), *cloud.vision.parameters()]:
                p.requires_grad_(False)
            if gradient_checkpointing:
                # transformers checkpoints only in training mode; the frozen LM has no dropout
                # that training mode would switch on (llava-1.5's attention_dropout is 0).
                cloud.model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
                cloud.model.train()

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            feats = self.edge(pixels.to(self.device, self.dtype))
        # The edge runs in inference mode; autograd may not save its tensors, so the codec's
        # losses get a normal copy.
        return feats.float().clone()

    def answer_logits(self, feats: torch.Tensor, batch: codec_data.Batch
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, vocab) at the batch's target positions, and the image features the
        language model read (the cloud's vision blocks and projector), from features at the
        cut."""
        from cloud_server.cloud_half import merge_image_tokens

        model = self.cloud.model
        with self.autocast():
            image_features = self.cloud.vision(feats.to(self.dtype))
            embeds = merge_image_tokens(model, batch.ids, image_features)
            logits = model(inputs_embeds=embeds, attention_mask=batch.mask).logits
        return logits[batch.rows, batch.cols].float(), image_features.float()


def codec_losses(codec, halves: FrozenHalves, x: torch.Tensor, batch: codec_data.Batch,
                 variance: float, distill_weight: float, world: World | None = None,
                 vision_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The training loss and its parts. Under DDP the distillation is divided by the mean
    number of answer tokens per process, not this process's own, so the averaged gradient is
    exactly that of one process holding the whole global batch.

    ``vision_weight`` adds the error of the image features the language model reads (after
    the cloud's vision blocks and the projector), relative to their variance: at an early cut
    the reconstruction weighs every channel of the cut alike, while the blocks after it amplify
    some errors and ignore others; this term measures them where they arrive."""
    x_hat, codebook_loss, commit_loss = codec(x)
    recon = F.mse_loss(x_hat, x) / variance
    loss = recon + codebook_loss + 0.25 * commit_loss
    parts = {"recon": recon.item()}
    if distill_weight:
        with torch.no_grad():
            teacher, teacher_image = halves.answer_logits(x, batch)
            teacher = teacher.log_softmax(-1)
        student, student_image = halves.answer_logits(x_hat, batch)
        student = student.log_softmax(-1)
        tokens = world.mean(float(len(student))) if world else len(student)
        distill = F.kl_div(student, teacher, log_target=True, reduction="sum") / tokens
        loss = loss + distill_weight * distill
        parts["distill"] = distill.item()
        if vision_weight:
            image_error = F.mse_loss(student_image, teacher_image) / teacher_image.var()
            loss = loss + vision_weight * image_error
            parts["image_features"] = image_error.item()
        parts["agreement"] = (student.argmax(-1) == teacher.argmax(-1)).float().mean().item()
    return loss, parts


# Tokens whose moments give the PCA (the first images' tokens, all of them): a covariance of
# D x D needs many more than D samples; 100,000 is 98 per dimension at CLIP-L's 1024.
PCA_TOKENS = 100_000


@torch.no_grad()
def initialise(codec: AlignedVQ, halves: FrozenHalves, make_batches, images: int,
               run: CodecTraining) -> float:
    """The codec's starting point, in memory bounded by the settings, not the data:

    1. the PCA from the mean and covariance of the aligned tokens of the first images (summed
       moments: D x D numbers, whatever the number of tokens);
    2. k-means on at most ``init_tokens`` tokens drawn evenly from ``images`` images, held
       already down-projected (code_dim numbers each, not D).

    With ``run.init_from`` the weights come from that codec instead. Returns the features'
    variance over the initialisation images (the reconstruction loss's scale).
    ``make_batches()`` gives a fresh pass over the initialisation images."""
    d = codec.config.feature_dim
    if codec.config.position_prior and run.init_from is None:
        codec.set_position_mean(_position_mean(codec, halves, make_batches(), run.progress))
    total = torch.zeros(d, dtype=torch.float64)
    outer = torch.zeros(d, d, dtype=torch.float64)
    seen, token_mean, token_log_std = 0, 0.0, 0.0
    # A warm start keeps its own projection: only the loss scale is measured (second pass).
    first_pass = make_batches() if run.init_from is None else ()
    for batch in tqdm(first_pass, desc="codec initialisation: PCA", unit="batch",
                      disable=not run.progress):
        feats = halves.features(batch.pixels)
        aligned = codec.aligned_residual(feats).reshape(-1, d).double().cpu()
        _, mean, log_std = codec.align(feats)
        total += aligned.sum(0)
        outer += aligned.T @ aligned
        token_mean += mean.sum().item()
        token_log_std += log_std.sum().item()
        seen += len(aligned)
        if seen >= PCA_TOKENS:
            break
    if run.init_from is None:
        mu = total / seen
        codec.set_projection(mu, outer / seen - torch.outer(mu, mu), token_mean / seen,
                             token_log_std / seen)
    per_image = max(1, math.ceil(run.init_tokens / images))
    g = torch.Generator().manual_seed(run.seed)
    projected, moments = [], torch.zeros(3, dtype=torch.float64)   # count, sum, sum of squares
    for batch in tqdm(make_batches(), desc="codec initialisation: k-means sample",
                      unit="batch", disable=not run.progress):
        feats = halves.features(batch.pixels)
        moments += torch.tensor([feats.numel(), feats.sum().item(), feats.pow(2).sum().item()],
                                dtype=torch.float64)
        if run.init_from is None:
            for image in codec.project(feats):
                picks = torch.randperm(len(image), generator=g)[:per_image].to(image.device)
                projected.append(image[picks])
    if run.init_from is None:
        codec.initialise_codebooks(torch.cat(projected)[:run.init_tokens], run.seed)
    else:
        codec.load_state_dict(warm_start(run.init_from, codec.config).state_dict())
    count, mean_sum, square_sum = moments.tolist()
    return square_sum / count - (mean_sum / count) ** 2


@torch.no_grad()
def _position_mean(codec: AlignedVQ, halves: FrozenHalves, batches,
                   progress: bool) -> torch.Tensor:
    """The aligned tokens' mean at each position (tokens, D) over the first images (as many
    as the PCA reads), for the position prior's starting point."""
    total, images = None, 0
    for batch in tqdm(batches, desc="codec initialisation: position mean", unit="batch",
                      disable=not progress):
        feats = codec.align(halves.features(batch.pixels))[0].double()
        total = feats.sum(0) if total is None else total + feats.sum(0)
        images += len(feats)
        if images * feats.shape[1] >= PCA_TOKENS:
            break
    return (total / images).float()


def warm_start(codec_dir: Path, config: CodecConfig) -> AlignedVQ:
    """The codec to fine-tune: it must have this run's geometry and vision fingerprint."""
    start = AlignedVQ.load(codec_dir, expect_fingerprint=config.vision_fingerprint,
                           expect_split_layer=config.split_layer)
    differ = [f"{k} {getattr(start.config, k)} vs {getattr(config, k)}"
              for k in ("feature_dim", "code_dim", "bits", "stages", "tokens",
                        "position_prior", "context_layers", "uncoded_tokens")
              if getattr(start.config, k) != getattr(config, k)]
    if differ:
        raise ValueError(f"--init-from {codec_dir}: not this run's geometry ("
                         + ", ".join(differ) + ")")
    return start


@torch.no_grad()
def evaluate_held_out(codec: AlignedVQ, halves: FrozenHalves, data, variance: float,
                      distill_weight: float, vision_weight: float = 0.0) -> dict:
    """The losses over the held-out samples: reconstruction per image, distillation and
    answer-token agreement per answer token."""
    totals, weights = {}, {}
    for batch in data:
        batch = batch.to(halves.device)
        x = halves.features(batch.pixels)
        _, parts = codec_losses(codec, halves, x, batch, variance, distill_weight,
                                vision_weight=vision_weight)
        for k, v in parts.items():
            weight = len(x) if k == "recon" else len(batch.rows)
            totals[k] = totals.get(k, 0.0) + v * weight
            weights[k] = weights.get(k, 0) + weight
    return {k: round(v / weights[k], 5) for k, v in totals.items()}


class JsonLog:
    """One JSON object a line (``OUT/training_log.jsonl``), appended to across resumes."""

    def __init__(self, path: Path, enabled: bool, fresh: bool):
        self.path, self.enabled = path, enabled
        if enabled and fresh:
            path.unlink(missing_ok=True)

    def write(self, **event) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(event) + "\n")


def split_held_out(samples: list, held_out: int, seed: int) -> tuple[list, list]:
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    held = sorted(order[:held_out])
    keep = sorted(order[held_out:])
    return [samples[i] for i in keep], [samples[i] for i in held]


def train_codec(run: CodecTraining) -> dict:
    world = join(run.device)
    try:
        return _train(run, world)
    finally:
        world.close()


def _train(run: CodecTraining, world: World) -> dict:
    torch.manual_seed(run.seed)
    rng = random.Random(run.seed)
    started = time.monotonic()
    if run.batch % world.size:
        raise ValueError(f"--batch {run.batch} does not divide among {world.size} processes")
    per_process = run.batch // world.size
    dataset = read_dataset(run.dataset, run.image_folder, run.max_images)
    # By default 64 samples, or a tenth of a smaller dataset, so a small one still trains.
    held_out = min(64, len(dataset) // 10) if run.held_out is None else run.held_out
    train_samples, held_samples = split_held_out(list(dataset), held_out, run.seed)
    if not train_samples:
        raise DatasetError(f"{run.dataset}: no samples left for training after --held-out "
                           f"{held_out}")
    out = Path(run.out)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
    halves = FrozenHalves(run, world)
    tokenizer = None
    pad_id = 0
    if halves.cloud is not None:
        tokenizer = ConversationTokenizer(halves.cloud.processor, halves.cloud.image_tokens)
        pad_id = halves.cloud.processor.tokenizer.pad_token_id
    samples = codec_data.CodecSamples(train_samples, halves.image_processor, tokenizer)

    edge = halves.edge
    config = CodecConfig(feature_dim=edge.config.vision_config.hidden_size, code_dim=run.code_dim,
                         bits=run.bits, stages=run.stages,
                         tokens=edge.split.tokens(edge.config.vision_config),
                         split_layer=edge.split.split_layer, vision_fingerprint=edge.fingerprint,
                         model_id=Path(run.model_dir).name, position_prior=run.position_prior,
                         context_layers=run.context_layers,
                         uncoded_tokens=_uncoded_tokens(run, edge.split))
    if run.init_from is not None:
        warm_start(run.init_from, config)  # refused before any image is read
    codec = AlignedVQ(config).to(world.device)
    opt = torch.optim.Adam(codec.parameters(), lr=run.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / run.steps)))
    usage = torch.zeros(run.stages, config.codebook_size, device=world.device)
    state = resume.load(run.checkpoint_dir(), world.rank) if run.resume else None
    log = JsonLog(out / LOG_FILE, world.is_main, fresh=state is None)
    if state is not None:
        resume.check_settings(state, asdict(run))
        resume.restore(state, codec, opt, sched, usage, rng)
        start, variance, history = state["step"], state["variance"], state["history"]
        log.write(event="resumed", step=start)
    else:
        start, history = 0, []
        # Rank 0 initialises; DDP's constructor then broadcasts its weights to the others.
        variance = torch.zeros(1, dtype=torch.float64)
        if world.is_main:
            init_order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(
                run.seed))[:run.init_images].tolist()
            init_set = torch.utils.data.Subset(samples, init_order)
            init_data = codec_data.loader(init_set, _chunks(len(init_set), per_process),
                                          run.workers, pad_id)
            variance[0] = initialise(codec, halves, lambda: codec_data.batches(init_data),
                                     len(init_set), run)
        world.broadcast_from_main(variance)
        variance = variance.item()
    model = codec
    if world.parallel:
        model = torch.nn.parallel.DistributedDataParallel(
            codec, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    held_data = None
    if held_samples and world.is_main:
        held_set = codec_data.CodecSamples(held_samples, halves.image_processor, tokenizer)
        # Batches of the global size, so the figures do not depend on the number of processes.
        held_data = codec_data.loader(held_set, _chunks(len(held_set), run.batch), 0, pad_id)
    order = codec_data.StepOrder(len(samples), per_process, world.size, world.rank, run.seed,
                                 start)
    data = codec_data.batches(codec_data.loader(samples, order, run.workers, pad_id))
    bar = tqdm(range(start + 1, run.steps + 1), desc="codec training", unit="step",
               initial=start, total=run.steps, disable=not (run.progress and world.is_main))
    window_started, window_images, window = time.monotonic(), 0, {}
    for step in bar:
        batch = next(data).to(world.device)
        x = halves.features(batch.pixels)
        loss, parts = codec_losses(model, halves, x, batch, variance, run.distill_weight, world,
                                   run.vision_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        window_images += len(x) * world.size
        with torch.no_grad():
            used = codec.encode(x).reshape(-1, run.stages)
            usage *= 0.99
            for s in range(run.stages):
                usage[s].index_add_(0, used[:, s], torch.ones(len(used), device=usage.device))
            if step % 100 == 0 and step < run.steps * 0.8:
                _expire_dead_codes(codec, x, usage, rng, world)
        parts = {k: world.mean(v) for k, v in parts.items()}
        bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
        for k, v in parts.items():
            window.setdefault(k, []).append(v)
        if step % run.log_every == 0 or step == run.steps:
            # The window's mean: one step's distillation loss swings by two orders of magnitude.
            means = {k: round(sum(v) / len(v), 5) for k, v in window.items()}
            elapsed = time.monotonic() - window_started
            log.write(event="train", step=step, lr=sched.get_last_lr()[0],
                      images_per_s=round(window_images / elapsed, 2), **means)
            history.append({"step": step, **means})
            window_started, window_images, window = time.monotonic(), 0, {}
        if held_data is not None and (step % run.eval_every == 0 or step == run.steps):
            codec.eval()
            log.write(event="held_out", step=step,
                      **evaluate_held_out(codec, halves, held_data, variance,
                                          run.distill_weight, run.vision_weight))
            codec.train()
        stopping = step == run.stop_at and step < run.steps
        if (step % run.save_every == 0 and step < run.steps) or stopping:
            resume.save(run.checkpoint_dir(), world, step=step, codec=codec, opt=opt,
                        sched=sched, usage=usage, rng=rng, variance=variance, history=history,
                        settings=asdict(run))
            log.write(event="checkpoint", step=step)
        if step % run.eval_every == 0 or step % run.save_every == 0:
            world.barrier()  # the held-out evaluation and the checkpoint run on rank 0 only
        if stopping:
            log.write(event="stopped", step=step)
            return {"stopped_at": step, "processes": world.size, "history": history}
    codec.eval()
    summary = {"config": config.__dict__, "images": len(dataset), "held_out": len(held_samples),
               "format": dataset.format, "steps": run.steps, "batch": run.batch,
               "processes": world.size, "device": str(world.device), "dtype": run.dtype,
               "lr": run.lr, "distill_weight": run.distill_weight,
               "vision_weight": run.vision_weight, "seed": run.seed,
               # a fine-tune's figures mean little without what it started from
               "init_from": None if run.init_from is None else {
                   "path": str(run.init_from),
                   "fingerprint": json.loads((run.init_from / "codec.json").read_text())
                   .get("fingerprint")},
               "history": history, "minutes": round((time.monotonic() - started) / 60, 1),
               "codes_used": [int((u > 0.01).sum()) for u in world.sum(usage.clone())]}
    if world.is_main:
        codec.cpu().save(out)
        (out / "training_log.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        resume.remove(run.checkpoint_dir())
    return summary


def _uncoded_tokens(run: CodecTraining, split) -> int:
    if not run.uncoded_cls:
        return 0
    if not split.sends_cls:
        raise ValueError(f"--uncoded-cls: no CLS crosses at split layer {split.split_layer} "
                         f"(it does only before the feature layer)")
    if not run.position_prior:
        raise ValueError("--uncoded-cls: the cloud decodes CLS from the position prior; add "
                         "--position-prior")
    return 1


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _expire_dead_codes(codec: AlignedVQ, x, usage, rng, world: World) -> None:
    """Rank 0 re-seeds the codes no process used, from its own batch, and sends the codebooks
    and usage to the others, so the replicas stay identical."""
    total = world.sum(usage.clone())
    if world.is_main:
        codec.expire_dead_codes(x, total, rng)
    world.broadcast_from_main(codec.codebooks.data)
    world.broadcast_from_main(total)
    usage.copy_(total / world.size)
