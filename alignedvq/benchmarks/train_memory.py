"""Peak host memory of ``alignedvq train-codec`` against the dataset size (issue 21).

    python -m alignedvq.benchmarks.train_memory          # N = 100 and 400, workers 0 and 2
    python -m alignedvq.benchmarks.train_memory --images 100 400 --workers 0 --init-tokens 50000

In a work folder it writes an HF-format LLaVA checkpoint with llava-1.5-7b's vision tower
(CLIP ViT-L/14-336, random weights) and a small Llama (the embedded model's tokenizer, processor
at 336 px), ShapesVQA datasets of N images (``alignedvq dataset``; 128 px images the processor
resizes), then runs ``alignedvq train-codec --split-layer 1 --steps 3 --distill-weight 0
--max-images N --workers W`` as a child process, one run at a time, and reports:

* ``trainer_peak_rss_mb``: the kernel's high-water mark of the trainer's resident set
  (``ru_maxrss`` from ``os.wait4`` on that child). Linux gives the largest of the process and
  its reaped descendants, not their sum, so DataLoader workers are included only if one of
  them peaked above the trainer;
* ``tree_peak_rss_mb`` / ``tree_peak_pss_mb``: the trainer plus its DataLoader workers summed,
  sampled from /proc every ``--poll`` seconds (RSS counts the pages the forked workers share
  with the trainer once per process; PSS splits them, so it is the tree's real footprint). A
  sample can miss a short peak; the kernel's figure cannot.

The difference per image between the smallest and the largest N is the issue's criterion
(< 0.5 MB per image; the old trainer, which held every image's features in RAM, grew 3.5 MB).
The initialisation keeps ``min(init_tokens, N x 577)`` tokens of 1024 float32 (4 KiB each);
below N = init_tokens / 577 that sample, not the training data, grows with N, so the module also
runs with ``--init-tokens`` small enough to be the bound at every N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CUT_TOKENS = 577          # CLIP ViT-L/14-336: 24 x 24 patches + CLS
HIDDEN = 1024
SMALL_TEXT = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)


def python() -> list[str]:
    return [sys.executable]


def write_checkpoint(out: Path) -> Path:
    """llava-1.5-7b's vision tower and projector shape, random weights, a 2-layer Llama: what
    ``EdgeVision.from_pretrained`` and ``CloudHalf`` load from a llava-1.5-hf folder."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from alignedvq.benchmarks.gpu_geometry import llava_config
    from alignedvq.training.checkpoint_layout import rewrite_to_llava15_layout
    from common.paths import DEFAULT_MODEL_DIR

    if (out / "config.json").is_file():
        return out
    # The embedded model's tokenizer: its image token and chat template are what the trainer's
    # conversation tokenizer expects, and its 51-word vocabulary keeps the LM head small.
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    vision = llava_config(shrink=False).vision_config
    text = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       **SMALL_TEXT)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    rewrite_to_llava15_layout(out)
    size = vision.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size},
                                         crop_size={"height": size, "width": size})
    chat_template = (DEFAULT_MODEL_DIR / "chat_template.jinja").read_text()
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                   patch_size=vision.patch_size, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=chat_template).save_pretrained(out)
    return out


def write_dataset(out: Path, n: int, seed: int = 11) -> Path:
    if not (out / "questions.jsonl").is_file():
        subprocess.run([*python(), "-m", "alignedvq.cli", "dataset", "--out", str(out),
                        "--n", str(n), "--seed", str(seed), "--quiet"], check=True)
    return out / "questions.jsonl"


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (DataLoader workers are the trainer's children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return found


def _rollup_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from smaps_rollup; (0, 0) once it has gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class TreeSampler(threading.Thread):
    """The summed RSS and PSS of a process tree, sampled until the root exits."""

    def __init__(self, pid: int, period: float):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak_rss_kb = self.peak_pss_kb = self.most_processes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.pid)
            sums = [_rollup_kb(p) for p in pids]
            self.peak_rss_kb = max(self.peak_rss_kb, sum(r for r, _ in sums))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(p for _, p in sums))
            self.most_processes = max(self.most_processes, len(pids))
            self.done.wait(self.period)


def measure(model: Path, dataset: Path, n: int, workers: int, out: Path,
            init_tokens: int | None, split_layer: int, poll: float) -> dict:
    cmd = [*python(), "-m", "alignedvq.cli", "train-codec", "--model", str(model),
           "--dataset", str(dataset), "--split-layer", str(split_layer), "--steps", "3",
           "--distill-weight", "0", "--max-images", str(n), "--workers", str(workers),
           "--out", str(out), "--quiet"]
    if init_tokens is not None:
        cmd += ["--init-tokens", str(init_tokens)]
    started = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(child.pid, poll)
    sampler.start()
    output = child.stdout.read()
    # wait4 on this very child: RUSAGE_CHILDREN would give the largest of every run so far.
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    sampler.done.set()
    sampler.join()
    if child.returncode:
        raise RuntimeError(f"train-codec failed ({child.returncode}):\n{output[-3000:]}")
    held = min(init_tokens or 200_000, n * CUT_TOKENS)  # n <= --init-images (2048) here
    return {"images": n, "workers": workers, "init_tokens_flag": init_tokens,
            "init_sample_tokens": held,
            "init_sample_mb": round(held * HIDDEN * 4 / 1e6, 1),
            "trainer_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),   # Linux: KiB
            "tree_peak_rss_mb": round(sampler.peak_rss_kb / 1024, 1),
            "tree_peak_pss_mb": round(sampler.peak_pss_kb / 1024, 1),
            "processes": sampler.most_processes, "wall_s": round(time.monotonic() - started, 1),
            "command": " ".join(["alignedvq", *cmd[3:]])}


def per_image(rows: list[dict]) -> list[dict]:
    """MB per image between the smallest and largest N, for each (workers, init-tokens)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["workers"], r["init_tokens_flag"]), []).append(r)
    out = []
    for (workers, init_tokens), rs in groups.items():
        lo, hi = min(rs, key=lambda r: r["images"]), max(rs, key=lambda r: r["images"])
        if lo is hi:
            continue
        span = hi["images"] - lo["images"]
        out.append({"workers": workers, "init_tokens_flag": init_tokens,
                    "images": [lo["images"], hi["images"]],
                    **{f"{k}_per_image": round((hi[k] - lo[k]) / span, 3)
                       for k in ("trainer_peak_rss_mb", "tree_peak_rss_mb", "tree_peak_pss_mb",
                                 "init_sample_mb")}})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.train_memory",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[100, 400])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--init-tokens", type=int, nargs="+", default=[None],
                   help="train-codec --init-tokens values to run (default: its own default)")
    p.add_argument("--split-layer", type=int, default=1)
    p.add_argument("--work", help="folder for the checkpoint and datasets (kept; default: temp)")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between /proc samples")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="alignedvq-train-memory-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = write_checkpoint(work / "llava-7b-vision-small-lm")
        data = write_dataset(work / f"shapes-{max(args.images)}", max(args.images))
        rows = []
        for init_tokens in args.init_tokens:
            for workers in args.workers:
                for n in args.images:
                    r = measure(model, data, n, workers, Path(tmp) / f"codec-{n}-{workers}",
                                init_tokens, args.split_layer, args.poll)
                    rows.append(r)
                    if not args.json:
                        print(json.dumps(r), flush=True)
    result = {"runs": rows, "per_image": per_image(rows)}
    if args.json:
        print(json.dumps(result))
    else:
        for d in result["per_image"]:
            print(json.dumps(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
