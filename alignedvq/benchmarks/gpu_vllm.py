"""Both engines on one GPU at llava-1.5-7b's architecture, random weights (no download):
answers per second and p50/p99 latency at 1, 8 and 32 concurrent clients, side by side in one
run. Prepared for a GPU machine; NOT run here (no GPU on the development machine).

    python -m alignedvq.benchmarks.gpu_vllm                  # on a GPU machine with the vLLM CUDA build
    python -m alignedvq.benchmarks.gpu_vllm --shrink         # the same steps at a tiny geometry (smoke)

Steps (each prints as it starts):
1. Writes a llava-1.5-7b-hf-shaped checkpoint to --work (CLIP ViT-L/14-336, Llama-7B, float16,
   random weights, llava-1.5-hf key layout) with a tokenizer and processor taken from the
   embedded model (ids fit the 32064-entry vocabulary; answers are meaningless, only timings
   count), and an untrained 12-bit AlignedVQ codec for its vision fingerprint (576 tokens).
2. ``alignedvq bench batching``'s driver against ``cloud-server`` with the builtin engine
   (batching off, then on) and with ``--engine vllm``; vLLM loads the same architecture with
   ``load_format="dummy"`` (random weights generated on the GPU; it never reads the 14 GB), the
   builtin engine loads the written checkpoint. All with ``--dtype float16``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from common.paths import DEFAULT_MODEL_DIR

T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f} s] {message}", flush=True)


def write_checkpoint(out: Path, shrink: bool, device: str) -> None:
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from alignedvq.benchmarks.gpu_geometry import llava_config
    from alignedvq.training.checkpoint_layout import rewrite_to_llava15_layout

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    config = llava_config(shrink)
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config.text_config.pad_token_id = tokenizer.pad_token_id
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    size = config.vision_config.image_size
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float16)  # 14 GB of parameters built in place, not 28
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.config.dtype = "float16"
    model.save_pretrained(out)
    rewrite_to_llava15_layout(out)
    del model
    image_processor = CLIPImageProcessor(size={"shortest_edge": size},
                                         crop_size={"height": size, "width": size})
    chat_template = (DEFAULT_MODEL_DIR / "chat_template.jinja").read_text()
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                   patch_size=config.vision_config.patch_size,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=chat_template).save_pretrained(out)


def write_codec(model_dir: Path, out: Path) -> None:
    from transformers import AutoConfig

    from common.codec.aligned_vq import AlignedVQ, CodecConfig
    from common.split.point import SplitPoint
    from common.split.weights import vision_fingerprint

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    split = SplitPoint.from_config(config)
    AlignedVQ(CodecConfig(feature_dim=config.vision_config.hidden_size, code_dim=32, bits=12,
                          stages=1, tokens=split.tokens(config.vision_config),
                          split_layer=split.split_layer,
                          vision_fingerprint=vision_fingerprint(model_dir, split),
                          model_id=model_dir.name)).save(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.gpu_vllm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/alignedvq-gpu-vllm", help="checkpoint folder")
    p.add_argument("--shrink", action="store_true", help="tiny geometry: a smoke run")
    p.add_argument("--seconds", type=float, default=20.0, help="per point")
    p.add_argument("--gpu-memory-utilization", default="0.6",
                   help="vLLM's share of the GPU (the builtin server is not running then)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    say(f"device {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'no GPU'}), "
        f"torch {torch.__version__}")
    work = Path(args.work)
    model_dir, codec_dir = work / "llava-1.5-7b-random", work / "codec-12bit-untrained"
    if not (model_dir / "config.json").is_file():
        shutil.rmtree(model_dir, ignore_errors=True)
        say(f"step 1: writing a random llava-1.5-7b-shaped checkpoint to {model_dir}")
        write_checkpoint(model_dir, args.shrink, device)
    say(f"step 1: checkpoint at {model_dir}; writing an untrained codec for it")
    write_codec(model_dir, codec_dir)

    from alignedvq.benchmarks import batching

    batching.SETTINGS = {
        "off": ["--max-batch-size", "1", "--dtype", "float16"],
        "on": ["--dtype", "float16"],
        "vllm": ["--engine", "vllm", "--max-batch-size", "32", "--dtype", "float16",
                 "--gpu-memory-utilization", args.gpu_memory_utilization,
                 "--vllm-args", json.dumps({"load_format": "dummy"})],
    }
    say("step 2: serving both engines in turn; 1, 8 and 32 clients each")
    report = batching.run(clients=(1, 8, 32), progress=say, model=model_dir, codec=codec_dir,
                          engines="both", seconds=args.seconds)
    report["command"] = "python -m alignedvq.benchmarks.gpu_vllm" + (" --shrink" if args.shrink else "")
    print(batching.table(report), flush=True)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
