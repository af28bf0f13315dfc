"""The real geometry on a GPU: llava-1.5-7b's architecture with random weights (timings only,
no accuracy), the edge half and the cloud half of the split against the pixel path.

    python -m alignedvq.benchmarks.gpu_geometry --device cuda --dtype float16      # on a GPU machine
    python -m alignedvq.benchmarks.gpu_geometry --shrink                           # tiny config, any CPU

Measured, each the median of ``--repeats`` runs after warm-up (CUDA synchronised):

* edge half: pixels -> CLIP ViT-L/14-336 blocks up to the feature layer (23 of 24) -> AlignedVQ
  encode (12 bits, 576 tokens) -> packed indices in host memory;
* cloud half: unpack -> codebook lookup + de-align (decode) -> projector -> scatter into the
  prompt -> Llama-7B prefill, then the time per generated token (KV cache);
* pixel path (the cloud-only baseline's cloud work): the unmodified model's prefill from pixels
  (the whole vision tower + projector + prefill), then the same per-token time.

The model is built from ``LlavaConfig`` (CLIP-L/14-336 vision config, Llama-7B text config) on
the device directly in the chosen dtype: initialising 7B parameters on a GPU takes seconds and
leaves every buffer (position ids, rotary frequencies) correct, which ``to_empty`` would not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

PROMPT_TEXT_TOKENS = 20   # llava-1.5's "USER: <image>\n{question} ASSISTANT:" is ~15-25 tokens
GPU_COMMAND = "python -m alignedvq.benchmarks.gpu_geometry --device cuda --dtype float16"


def llava_config(shrink: bool):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if shrink:
        vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                  num_attention_heads=4, image_size=56, patch_size=14,
                                  projection_dim=32, hidden_act="quick_gelu")
        text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, vocab_size=32064,
                           max_position_embeddings=4096)
    else:  # llava-hf/llava-1.5-7b-hf's config.json
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14,
                                  projection_dim=768, hidden_act="quick_gelu",
                                  layer_norm_eps=1e-5)
        text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                           max_position_embeddings=4096, rms_norm_eps=1e-5)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    for c in (config, config.vision_config, config.text_config):
        c._attn_implementation = "sdpa"
    return config


def _cache(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def run(shrink: bool = False, device: str = "cuda", dtype: str = "float16", repeats: int = 10,
        bits: int = 12, new_tokens: int = 16) -> dict:
    from transformers import LlavaForConditionalGeneration

    from cloud_server.cloud_half import merge_image_tokens
    from cloud_server.cloud_vision import CloudVision
    from common.codec.aligned_vq import AlignedVQ, CodecConfig
    from common.split.point import SplitPoint
    from common.split.vision import EdgeVision
    from common.wire.packing import pack, unpack

    dev = torch.device(device)
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    config = llava_config(shrink)
    started = time.perf_counter()
    with dev:
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch_dtype).eval()
    split = SplitPoint.from_config(config)
    vc = config.vision_config
    tokens = split.tokens(vc)
    with dev:
        edge = EdgeVision(vc, split).to(torch_dtype).eval()
        codec = AlignedVQ(CodecConfig(feature_dim=vc.hidden_size, code_dim=32, bits=bits,
                                      stages=1, tokens=tokens, split_layer=split.split_layer,
                                      vision_fingerprint="0" * 16)).eval()
    _sync(dev)
    build_s = time.perf_counter() - started
    # The cloud half as common.split runs it: no vision blocks after the cut at the feature layer.
    cloud_vision = CloudVision(split, torch.nn.ModuleList(), model.model.multi_modal_projector)

    pixels = torch.randn(1, 3, vc.image_size, vc.image_size, device=dev, dtype=torch_dtype)
    image_tokens = tokens  # the default strategy: CLS dropped, every crossing token is an image token
    text = torch.randint(100, 30000, (1, PROMPT_TEXT_TOKENS), device=dev)
    ids = torch.cat([text[:, :5], torch.full((1, image_tokens), config.image_token_id, device=dev),
                     text[:, 5:]], 1)
    mask = torch.ones_like(ids)

    state = {}

    def edge_half():
        feats = edge(pixels)
        idx = codec.encode(feats.float())[0, :, 0].cpu().numpy()
        state["packed"] = pack(idx, bits)

    def decode():
        idx = unpack(state["packed"], tokens, bits, 1 << bits)
        state["feats"] = codec.decode(torch.from_numpy(idx).to(dev)[None, :, None])

    def project():
        state["embeds"] = merge_image_tokens(model, ids, cloud_vision(state["feats"]))

    def prefill_split():
        out = model(inputs_embeds=state["embeds"], attention_mask=mask, use_cache=True)
        state["cache"], state["next"] = _cache(out), out.logits[:, -1:].argmax(-1)

    def prefill_pixels():
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_cache=True)
        state["cache"], state["next"] = _cache(out), out.logits[:, -1:].argmax(-1)

    def per_token_ms() -> float:
        """Greedy steps on the prefilled cache; the median step time."""
        cache, nxt, attn = state["cache"], state["next"], mask
        times = []
        for step in range(new_tokens + 2):
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
            t0 = time.perf_counter()
            out = model(input_ids=nxt, attention_mask=attn, use_cache=True,
                        cache=cache)
            nxt = out.logits[:, -1:].argmax(-1)
            cache = _cache(out)
            _sync(dev)
            if step >= 2:  # the first steps after a prefill warm up kernels and allocations
                times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    edge_ms = _median_ms(edge_half, dev, repeats)
    decode_ms = _median_ms(decode, dev, repeats)
    project_ms = _median_ms(project, dev, repeats)
    prefill_ms = _median_ms(prefill_split, dev, repeats)
    split_token_ms = per_token_ms()
    pixel_prefill_ms = _median_ms(prefill_pixels, dev, repeats)
    pixel_token_ms = per_token_ms()
    cloud_ms = decode_ms + project_ms + prefill_ms
    params = sum(p.numel() for p in model.parameters())
    return {
        "geometry": ("shrunken test config" if shrink else "llava-1.5-7b (CLIP ViT-L/14-336 + "
                     "Llama-7B), random weights"),
        "shrink": shrink, "device": str(dev), "dtype": dtype,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "parameters": params, "build_s": round(build_s, 2), "repeats": repeats,
        "tokens": tokens, "dim": vc.hidden_size, "bits": bits,
        "payload_index_bytes": len(state["packed"]),
        "prompt_tokens": int(ids.shape[1]),
        "edge_ms": edge_ms, "cloud_decode_ms": decode_ms, "cloud_projector_ms": project_ms,
        "cloud_prefill_ms": prefill_ms, "cloud_first_token_ms": cloud_ms,
        "cloud_per_token_ms": split_token_ms,
        "pixel_prefill_ms": pixel_prefill_ms, "pixel_per_token_ms": pixel_token_ms,
        "cloud_saving_ms": pixel_prefill_ms - cloud_ms,
        "cloud_first_token_ratio": pixel_prefill_ms / cloud_ms,
    }


def table(r: dict) -> str:
    rows = [("edge: vision tower to the cut + encode + pack", r["edge_ms"]),
            ("cloud: unpack + decode", r["cloud_decode_ms"]),
            ("cloud: projector + merge", r["cloud_projector_ms"]),
            ("cloud: prefill from features", r["cloud_prefill_ms"]),
            ("cloud: first token total (split)", r["cloud_first_token_ms"]),
            ("pixel path: prefill from pixels (vision + projector + LM)", r["pixel_prefill_ms"]),
            ("per generated token (split / pixel)", None)]
    lines = ["| stage | ms |", "|---|---|"]
    for name, ms in rows:
        lines.append(f"| {name} | " + (f"{ms:.2f} |" if ms is not None else
                                        f"{r['cloud_per_token_ms']:.2f} / "
                                        f"{r['pixel_per_token_ms']:.2f} |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.gpu_geometry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shrink", action="store_true",
                   help="a tiny config of the same architecture (a CPU smoke run; timings "
                        "mean nothing)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                   help="default: float16 on a GPU, float32 on a CPU")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--bits", type=int, default=12)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not args.shrink and not args.device.startswith("cuda"):
        print(f"no CUDA device here; the 7B geometry needs a GPU (about 15 GB in float16). "
              f"On a GPU machine run:\n  {GPU_COMMAND}\nor, to check the script on this CPU, "
              f"add --shrink.", file=sys.stderr)
        return 2
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    result = run(args.shrink, args.device, dtype, args.repeats, args.bits)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['geometry']} on {result['gpu'] or result['device']}, {dtype}, "
              f"{result['parameters'] / 1e6:,.1f} M parameters, median of {args.repeats}")
        print(table(result))
        print(f"cloud work to the first token: {result['cloud_first_token_ratio']:.2f}x less "
              f"than from pixels; payload {result['payload_index_bytes']} B of indices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
