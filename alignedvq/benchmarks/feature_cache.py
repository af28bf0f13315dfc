"""Streaming against a bounded on-disk feature cache, for ``train-codec`` (issue 21).

    python -m alignedvq.benchmarks.feature_cache            # split layer 1 and the default cut

Side by side in one process, at llava-1.5-7b's vision geometry (CLIP ViT-L/14-336, random
weights, float32 on this CPU):

* compute: per image, the checkpoint's preprocessing of a 128 px ShapesVQA image (decode,
  resize to 336, normalise; the DataLoader workers' part) and the vision blocks up to the cut
  (the trainer's part, on the training device);
* read: the same features (T x 1024 float16, T = 577 at layer 1 and 576 at the feature layer,
  where CLS is dropped before the cut) from a memory-mapped file, in a random order, to float32
  tensors: warm (pages cached) and cold (the file's pages dropped with
  ``posix_fadvise(DONTNEED)``, which needs no root; ``fincore`` confirms what stays resident).
  On a virtual disk the host may still cache the blocks, so "cold" is the guest's cold.

Plus the disk a cache needs for LLaVA-1.5's instruction set (665K samples).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LLAVA_665K = 665_000


def _median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def preprocess_ms(images: list[Path], repeats: int) -> float:
    """The workers' part per image: open + the processor's resize/crop/normalise to 336 px."""
    from transformers import CLIPImageProcessor

    from common.imaging.policy import open_image
    from common.split.checkpoint import load_image_processor

    with tempfile.TemporaryDirectory() as tmp:
        CLIPImageProcessor(size={"shortest_edge": 336},
                           crop_size={"height": 336, "width": 336}).save_pretrained(tmp)
        processor = load_image_processor(tmp)  # the trainer's own loader (Pillow backend)

    def run():
        for path in images:
            processor(images=[open_image(path)], return_tensors="pt")

    return _median_ms(run, repeats) / len(images)


@torch.inference_mode()
def compute_ms(split_layer: int | None, batch: int, repeats: int) -> tuple[float, int]:
    """The vision blocks up to the cut, per image, and the number of tokens that cross."""
    from alignedvq.benchmarks.gpu_geometry import llava_config
    from common.split.point import SplitPoint
    from common.split.vision import EdgeVision

    torch.manual_seed(0)
    config = llava_config(shrink=False)
    split = SplitPoint.from_config(config, split_layer)
    edge = EdgeVision(config.vision_config, split).eval()
    pixels = torch.randn(batch, 3, 336, 336)
    ms = _median_ms(lambda: edge(pixels), repeats) / batch
    return ms, split.tokens(config.vision_config)


def _resident_pages(path: Path) -> str:
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "PAGES,SIZE",
                              str(path)], capture_output=True, text=True, check=True).stdout.split()
        return f"{out[0]} pages of {int(out[1]) // 4096}"
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return "unknown (no fincore)"


def read_ms(tokens: int, images: int, folder: Path, seed: int = 0) -> dict:
    """Per image, reading (tokens, 1024) float16 from a memmap to a float32 tensor."""
    path = folder / f"features-{tokens}.f16"
    shape = (images, tokens, 1024)
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    rng = np.random.default_rng(seed)
    for i in range(images):
        store[i] = rng.standard_normal((tokens, 1024), dtype=np.float32)
    store.flush()
    del store
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    order = rng.permutation(images)

    def read_all() -> float:
        cache = np.load(path, mmap_mode="r")
        t0 = time.perf_counter()
        for i in order:
            torch.from_numpy(np.array(cache[i])).float()  # a copy: the map is read-only
        return (time.perf_counter() - t0) * 1000 / images

    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    resident_before_cold = _resident_pages(path)
    cold = read_all()
    warm = statistics.median(read_all() for _ in range(3))
    size = path.stat().st_size
    path.unlink()
    return {"cold_read_ms": round(cold, 3), "warm_read_ms": round(warm, 3),
            "resident_before_cold_read": resident_before_cold, "file_mb": round(size / 1e6, 1),
            "images_in_file": images}


def cache_disk_gb(tokens: int, samples: int = LLAVA_665K) -> float:
    return round(samples * tokens * 1024 * 2 / 1e9, 1)


def run(layers: list[int | None], batch: int, repeats: int, cache_images: int,
        dataset_images: list[Path]) -> dict:
    rows = []
    pre = round(preprocess_ms(dataset_images, repeats), 2) if dataset_images else None
    with tempfile.TemporaryDirectory(prefix="alignedvq-cache-", dir="/var/tmp") as tmp:
        for layer in layers:
            ms, tokens = compute_ms(layer, batch, repeats)
            reading = read_ms(tokens, cache_images, Path(tmp))
            rows.append({"split_layer": 23 if layer is None else layer, "tokens": tokens,
                         "compute_ms": round(ms, 1), **reading,
                         "compute_over_warm_read": round(ms / reading["warm_read_ms"], 1),
                         "compute_over_cold_read": round(ms / reading["cold_read_ms"], 1),
                         "cache_disk_gb_665k": cache_disk_gb(tokens)})
    return {"geometry": "CLIP ViT-L/14-336 (llava-1.5-7b), random weights, float32",
            "device": "cpu", "threads": torch.get_num_threads(), "batch": batch,
            "repeats": repeats, "preprocess_ms_per_image": pre, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.feature_cache",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", nargs="+", default=["1", "default"],
                   help="split layers (``default``: the feature layer, 23)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache-images", type=int, default=256,
                   help="images in the memory-mapped file (~1.2 MB each)")
    p.add_argument("--images", help="a folder of ShapesVQA images to time preprocessing on")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = [None if x == "default" else int(x) for x in args.layers]
    images = sorted(Path(args.images).glob("*.png"))[:16] if args.images else []
    print(json.dumps(run(layers, args.batch, args.repeats, args.cache_images, images)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
