"""``alignedvq bench-codec``: AlignedVQ encode and decode time per image next to the vision
tower's, on this machine, for the embedded model and for LLaVA-1.5-7B's geometry.

The 7B row uses CLIP ViT-L/14-336's shape (24 blocks x 1024, 577 tokens) with random weights
and a randomly initialised codec: timings only, no accuracy.
"""

from __future__ import annotations

import platform
import time

import torch

from common.codec.aligned_vq import AlignedVQ, CodecConfig
from common.codec.encodings import AlignedVQEncoding
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def _row(name, vision, codec, pixels, repeats):
    with torch.inference_mode():
        feats = vision(pixels)
        enc = AlignedVQEncoding(codec)
        chunks = enc.encode(feats[0])
        vision_ms = _median_ms(lambda: vision(pixels), repeats)
        encode_ms = _median_ms(lambda: enc.encode(feats[0]), repeats)
        decode_ms = _median_ms(lambda: enc.decode(chunks), repeats)
    return {"geometry": name, "tokens": feats.shape[1], "dim": feats.shape[2],
            "bits": codec.config.bits, "vision_ms": vision_ms, "encode_ms": encode_ms,
            "decode_ms": decode_ms, "encode_vs_vision": encode_ms / vision_ms,
            "payload_bytes": sum(map(len, chunks))}


def run(repeats: int = 20, include_7b: bool = True) -> list[dict]:
    from transformers import CLIPVisionConfig

    from common.split.point import SplitPoint
    from common.split.vision import EdgeVision

    rows = []
    edge = EdgeVision.from_pretrained(DEFAULT_MODEL_DIR)
    codec = AlignedVQ.load(DEFAULT_CODEC_DIR, expect_fingerprint=edge.fingerprint)
    size = edge.config.vision_config.image_size
    rows.append(_row("embedded tiny LLaVA", edge, codec, torch.randn(1, 3, size, size), repeats))
    if include_7b:
        torch.manual_seed(0)
        vc = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14)
        vc._attn_implementation = "sdpa"
        split = SplitPoint(24, 23, 23, "default")   # llava-1.5: vision_feature_layer = -2
        vision = EdgeVision(vc, split).eval()
        big = AlignedVQ(CodecConfig(feature_dim=1024, code_dim=32, bits=12, stages=1,
                                    tokens=576, split_layer=23, vision_fingerprint="0" * 16)).eval()
        rows.append(_row("LLaVA-1.5-7B geometry (random weights)", vision, big,
                         torch.randn(1, 3, 336, 336), max(3, repeats // 5)))
    return rows


def main(repeats: int = 20, include_7b: bool = True) -> None:
    rows = run(repeats, include_7b)
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("| geometry | tokens x dim | bits | vision tower ms | encode ms | decode ms | "
          "encode / vision | payload B |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['geometry']} | {r['tokens']} x {r['dim']} | {r['bits']} | "
              f"{r['vision_ms']:.2f} | {r['encode_ms']:.2f} | {r['decode_ms']:.2f} | "
              f"{r['encode_vs_vision']:.2f} | {r['payload_bytes']} |")
