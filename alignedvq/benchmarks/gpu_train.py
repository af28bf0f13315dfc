"""Codec-training speed and GPU memory at llava-1.5-7b's full geometry (issue 21), random
weights, no download: one prepared script for a machine with a GPU.

    python -m alignedvq.benchmarks.gpu_train --json-out /tmp/gpu_train.json   # on a GPU machine
    python -m alignedvq.benchmarks.gpu_train --shrink --device cpu             # toy size, any CPU

For each of split layer 1 and the default cut (the feature layer, 23), batch 8 and 16, with and
without gradient checkpointing of the frozen language model: ``--warmup`` steps, then
``--steps`` timed steps of the trainer's own step (features at the cut from the frozen edge,
``train_codec.codec_losses`` with distillation through the frozen Llama-7B, backward, Adam),
CUDA synchronised; the peak is ``torch.cuda.max_memory_allocated`` over the configuration
(the model's 14 GB of bf16 weights included). A configuration that runs out of memory is
recorded as ``oom`` and the next one runs.

The model is built on the device directly in bf16, as gpu_geometry.py does; the codec is not
k-means initialised (the cost of a step does not depend on the codebook's values). Every
sequence is llava-1.5's single-turn shape: ``PROMPT_TEXT`` text tokens around the 576 image
tokens, then ``ANSWER_TOKENS`` answer tokens, each a distillation target. Progress lines go to
stdout from the first step, flushed; the last line is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

PROMPT_TEXT = 40        # "USER: <image>\n{question} ASSISTANT:" and a short question
ANSWER_TOKENS = 16      # a short llava-1.5 answer; each position is a distillation target
GPU_COMMAND = "python -m alignedvq.benchmarks.gpu_train --json-out /tmp/gpu_train.json"
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f} s] {message}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vision_layers(model) -> torch.nn.ModuleList:
    tower = model.model.vision_tower
    # transformers 5 flattens CLIPVisionModel (no .vision_model level); older versions do not.
    return getattr(tower, "vision_model", tower).encoder.layers


def build(shrink: bool, device: torch.device, dtype: torch.dtype):
    """The frozen LLaVA on the device, in ``dtype``: (model, config)."""
    from transformers import LlavaForConditionalGeneration

    from alignedvq.benchmarks.gpu_geometry import llava_config

    torch.manual_seed(0)
    config = llava_config(shrink)
    with device:
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()
    return model, config


def halves_at(model, config, split_layer: int | None, device: torch.device, dtype: torch.dtype,
              gradient_checkpointing: bool):
    """The trainer's FrozenHalves around the in-memory model, cut at ``split_layer``: the edge
    reuses the model's own embeddings and blocks (no second copy), the cloud its blocks after
    the cut, its projector and its language model."""
    from alignedvq.training.train_codec import FrozenHalves
    from cloud_server.cloud_vision import CloudVision
    from common.split.point import SplitPoint
    from common.split.vision import EdgeVision

    split = SplitPoint.from_config(config, split_layer)
    layers = _vision_layers(model)
    # Built on the meta device (no memory), then given the model's own modules.
    with torch.device("meta"):
        edge = EdgeVision(config.vision_config, split).eval()
    tower = getattr(model.model.vision_tower, "vision_model", model.model.vision_tower)
    edge.embeddings, edge.pre_layrnorm = tower.embeddings, tower.pre_layrnorm
    edge.layers = torch.nn.ModuleList(layers[:split.split_layer])
    cloud = types.SimpleNamespace(
        vision=CloudVision(split, torch.nn.ModuleList(layers[split.split_layer:
                                                             split.feature_layer]),
                           model.model.multi_modal_projector),
        model=model)
    if not gradient_checkpointing and model.is_gradient_checkpointing:
        model.gradient_checkpointing_disable()
        model.eval()
    halves = FrozenHalves.from_modules(edge, cloud, device, dtype, gradient_checkpointing)
    # The trainer's cloud.model has no vision tower (CloudHalf keeps the blocks after the cut
    # apart), so only the language model is checkpointed; transformers checkpoints a layer only
    # in training mode, so the shared vision tower goes back to eval mode.
    model.model.vision_tower.eval()
    return halves, split


def synthetic_batch(config, split, batch: int, device: torch.device):
    """Pixels and llava-1.5 single-turn conversations, every answer token a target."""
    from alignedvq.training.codec_data import Batch

    vc = config.vision_config
    image_tokens = split.image_tokens(vc)
    length = PROMPT_TEXT + image_tokens + ANSWER_TOKENS
    ids = torch.randint(100, 30000, (batch, length))
    ids[:, 5:5 + image_tokens] = config.image_token_id
    # Logits at p predict token p + 1: the answer's tokens are predicted from the position
    # before each (the trainer's ConversationTokenizer does the same).
    first = PROMPT_TEXT + image_tokens - 1
    cols = torch.arange(first, length).repeat(batch)
    rows = torch.arange(batch).repeat_interleave(length - first)
    pixels = torch.randn(batch, 3, vc.image_size, vc.image_size)
    return Batch(pixels, ids, torch.ones_like(ids), rows, cols).to(device)


def measure(model, config, split_layer, batch: int, checkpointing: bool, device, dtype,
            steps: int, warmup: int) -> dict:
    from alignedvq.training.train_codec import codec_losses
    from common.codec.aligned_vq import AlignedVQ, CodecConfig

    name = (f"split {split_layer if split_layer is not None else 'default'}, batch {batch}, "
            f"checkpointing {'on' if checkpointing else 'off'}")
    halves, split = halves_at(model, config, split_layer, device, dtype, checkpointing)
    vc = config.vision_config
    codec = AlignedVQ(CodecConfig(feature_dim=vc.hidden_size, code_dim=32, bits=12, stages=1,
                                  tokens=split.tokens(vc), split_layer=split.split_layer,
                                  vision_fingerprint="7b" * 8)).to(device)
    opt = torch.optim.Adam(codec.parameters(), lr=1e-3)
    data = synthetic_batch(config, split, batch, device)
    row = {"split_layer": split.split_layer, "batch": batch,
           "gradient_checkpointing": checkpointing, "tokens": split.tokens(vc),
           "sequence": int(data.ids.shape[1]), "targets": int(len(data.rows))}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        for step in range(warmup + steps):
            t0 = time.perf_counter()
            # The trainer's step (train_codec._train): features, losses, backward, Adam.
            x = halves.features(data.pixels)
            loss, parts = codec_losses(codec, halves, x, data, variance=1.0, distill_weight=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                codec.encode(x)  # the trainer's code-usage count
            _sync(device)
            ms = (time.perf_counter() - t0) * 1000
            if step >= warmup:
                times.append(ms)
            say(f"{name}: step {step + 1}/{warmup + steps} "
                f"{'(warm-up) ' if step < warmup else ''}{ms:.0f} ms, loss {loss.item():.4f}")
    except torch.cuda.OutOfMemoryError as e:
        say(f"{name}: out of memory ({str(e).splitlines()[0]})")
        row["status"] = "oom"
    else:
        row["status"] = "ok"
        median = statistics.median(times)
        row.update(step_ms_median=round(median, 1), steps_per_s=round(1000 / median, 3),
                   images_per_s=round(1000 * batch / median, 2), parts=parts)
    if device.type == "cuda":
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        row["peak_gpu_mb"] = None
    say(f"{name}: {json.dumps(row)}")
    return row


def run(shrink: bool, device: str, dtype: str, batches: list[int], split_layers: list,
        steps: int, warmup: int) -> dict:
    dev, torch_dtype = torch.device(device), getattr(torch, dtype)
    say(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), "
        f"torch {torch.__version__}, {dtype}, {'shrunken' if shrink else 'llava-1.5-7b'} geometry")
    started = time.perf_counter()
    model, config = build(shrink, dev, torch_dtype)
    _sync(dev)
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    say(f"built {params / 1e6:,.1f} M parameters in {build_s:.1f} s")
    rows = []
    for split_layer in split_layers:
        for checkpointing in (False, True):
            for batch in batches:
                rows.append(measure(model, config, split_layer, batch, checkpointing, dev,
                                    torch_dtype, steps, warmup))
    return {"geometry": ("shrunken test config" if shrink else "llava-1.5-7b (CLIP ViT-L/14-336 "
                         "+ Llama-7B), random weights"),
            "shrink": shrink, "device": str(dev), "dtype": dtype,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "torch": torch.__version__, "parameters": params, "build_s": round(build_s, 1),
            "steps": steps, "warmup": warmup, "results": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.gpu_train",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shrink", action="store_true",
                   help="a tiny config of the same architecture (a CPU smoke run in seconds; "
                        "timings mean nothing)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on a GPU; float32 on a CPU, where bf16 matmuls are "
                        "slow without AMX")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    p.add_argument("--split-layers", nargs="+", default=["1", "default"],
                   help="vision blocks to cut after (``default``: the feature layer, 23)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json-out", help="also write the JSON result to this file")
    args = p.parse_args(argv)
    if not args.shrink and not args.device.startswith("cuda"):
        print(f"no CUDA device here; the 7B geometry needs a GPU (~14 GB of bf16 weights plus "
              f"activations). On a GPU machine run:\n  {GPU_COMMAND}\nor, to check the script "
              f"on this CPU, add --shrink.", file=sys.stderr)
        return 2
    layers = [None if x == "default" else int(x) for x in args.split_layers]
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    result = run(args.shrink, args.device, dtype, args.batches, layers, args.steps,
                 args.warmup)
    text = json.dumps(result)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
