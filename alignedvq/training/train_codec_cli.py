"""``alignedvq train-codec``'s flags and what the command prints. One process trains on one
device; ``torchrun --nproc-per-node N -m alignedvq.cli train-codec ...`` trains on N (see
docs/model_and_codec.md, "Training a codec for your checkpoint")."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.paths import DEFAULT_MODEL_DIR


def add_parser(sub) -> None:
    p = sub.add_parser("train-codec", help="train an AlignedVQ codec for a frozen model")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="local HF LLaVA checkpoint (default: the embedded model)")
    p.add_argument("--dataset", required=True,
                   help="ShapesVQA or VQA JSON Lines, or LLaVA's instruction JSON (every gpt "
                        "turn is distilled); the format is detected from the file")
    p.add_argument("--image-folder", help="where the dataset's image paths start (default: the "
                                          "dataset file's folder)")
    p.add_argument("--out", required=True, help="folder for codec.safetensors, codec.json, "
                                                "the logs and (while training) checkpoint/")
    # Defaults of the four below: --init-from's codec's, else these (GEOMETRY_DEFAULTS).
    p.add_argument("--bits", type=int, help="bits per index: K = 2**bits (1..16); default 12")
    p.add_argument("--stages", type=int, help="residual stages, one index each; default 1")
    p.add_argument("--split-layer", type=int,
                   help="vision block whose output crosses (default: the feature layer)")
    p.add_argument("--code-dim", type=int, help="dimension the codebook lives in; default 32")
    p.add_argument("--steps", type=int, default=1500, help="optimisation steps")
    p.add_argument("--batch", type=int, default=32,
                   help="images per step, over all processes (each takes batch / processes)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam peak learning rate")
    p.add_argument("--distill-weight", type=float, default=1.0,
                   help="weight of the answer-distribution distillation (0 disables it and "
                        "the language model is not loaded)")
    p.add_argument("--vision-weight", type=float, default=0.0,
                   help="weight of the error of the image features the language model reads "
                        "(after the cloud's vision blocks and projector), relative to their "
                        "variance; helps an early --split-layer; needs --distill-weight > 0. "
                        "Default 0")
    p.add_argument("--position-prior", action=argparse.BooleanOptionalAction, default=None,
                   help="learn a mean per token position, known to edge and cloud, so the "
                        "codewords spend no bits on the position embedding; helps an early "
                        "--split-layer (default: off, or the --init-from codec's)")
    p.add_argument("--context-layers", type=int, default=None,
                   help="transformer layers in the decoder over each image's tokens (cloud "
                        "side only: the edge and the bytes do not change); helps an early "
                        "--split-layer (default: 0, or the --init-from codec's)")
    p.add_argument("--uncoded-cls", action=argparse.BooleanOptionalAction, default=None,
                   help="do not send CLS (it crosses only before the feature layer): the cloud "
                        "decodes it from the position prior, which this needs; the bits go to "
                        "the patches (default: off, or the --init-from codec's)")
    p.add_argument("--max-images", type=int, help="use only the first N samples")
    p.add_argument("--seed", type=int, default=0, help="fixes init, k-means and order")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N (under torchrun, cuda is each process's own GPU)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="the frozen model's dtype (autocast); the codec trains in float32")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader processes decoding and preprocessing images (0: inline)")
    p.add_argument("--init-images", type=int, default=2048,
                   help="images the k-means initialisation samples tokens from")
    p.add_argument("--init-tokens", type=int, default=200_000,
                   help="tokens the initialisation holds (its memory: tokens x hidden x 4 B)")
    p.add_argument("--init-from", metavar="CODEC_DIR",
                   help="start from this codec's weights instead of k-means, to fine-tune it "
                        "(same checkpoint; its split layer, bits, stages and code dimension "
                        "unless given, and then they must match)")
    p.add_argument("--held-out", type=int,
                   help="samples kept out of training for the periodic evaluation (default: "
                        "64, or a tenth of a smaller dataset; 0: none)")
    p.add_argument("--eval-every", type=int, default=250, help="held-out evaluation period")
    p.add_argument("--save-every", type=int, default=250,
                   help="checkpoint period in steps (OUT/checkpoint; removed when done)")
    p.add_argument("--log-every", type=int, default=50,
                   help="steps between lines of OUT/training_log.jsonl")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint when there is one (else start)")
    p.add_argument("--stop-at", type=int, metavar="STEP",
                   help="end after STEP with a checkpoint, for time-sliced jobs; run again "
                        "with --resume to continue")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the frozen language model's activations in the backward "
                        "pass: less GPU memory for the distillation, more compute per step")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


GEOMETRY_DEFAULTS = {"bits": 12, "stages": 1, "code_dim": 32, "split_layer": None,
                     "position_prior": False, "context_layers": 0, "uncoded_cls": False}


def fill_geometry(args) -> None:
    """--bits, --stages, --code-dim, --split-layer, --position-prior, --context-layers and
    --uncoded-cls left out: the --init-from codec's (a fine-tune keeps its geometry without
    repeating it), else the defaults."""
    start = {}
    if args.init_from:
        meta = Path(args.init_from) / "codec.json"
        start = json.loads(meta.read_text()) if meta.is_file() else {}
        start["uncoded_cls"] = bool(start.get("uncoded_tokens", 0))
    for name, default in GEOMETRY_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, start.get(name, default))


def run(args) -> int:
    import torch

    from alignedvq.training.host_memory import fix_mmap_threshold
    from alignedvq.training.train_codec import CodecTraining, train_codec

    fix_mmap_threshold()  # before the first feature batch (host_memory.py says why)
    fill_geometry(args)
    if args.vision_weight and not args.distill_weight:
        print("error: --vision-weight needs the cloud half, which --distill-weight 0 leaves "
              "out", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    settings = CodecTraining(
        model_dir=Path(args.model), dataset=Path(args.dataset), out=Path(args.out),
        bits=args.bits, stages=args.stages, split_layer=args.split_layer,
        code_dim=args.code_dim, steps=args.steps, batch=args.batch, lr=args.lr,
        distill_weight=args.distill_weight, vision_weight=args.vision_weight,
        position_prior=args.position_prior, context_layers=args.context_layers,
        uncoded_cls=args.uncoded_cls,
        seed=args.seed, max_images=args.max_images,
        image_folder=Path(args.image_folder) if args.image_folder else None,
        device=args.device, dtype=args.dtype, workers=args.workers,
        init_images=args.init_images, init_tokens=args.init_tokens,
        init_from=Path(args.init_from) if args.init_from else None, held_out=args.held_out,
        eval_every=args.eval_every, save_every=args.save_every, log_every=args.log_every,
        resume=args.resume, stop_at=args.stop_at,
        gradient_checkpointing=args.gradient_checkpointing,
        progress=not args.quiet)
    try:
        log = train_codec(settings)
    except (ValueError, FileNotFoundError) as e:
        # Bad data (DatasetError), a template without answer spans (TemplateError), a codec or
        # checkpoint from another run, no CUDA device: one line, not a traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not _is_main():
        return 0  # under torchrun the first process reports
    if "stopped_at" in log:
        print(f"stopped at step {log['stopped_at']}; continue with the same flags and --resume")
    else:
        print(f"saved codec to {args.out}: K={1 << args.bits} x {args.stages} stage(s), "
              f"{log['codes_used']} codes in use, {log['minutes']} min")
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
