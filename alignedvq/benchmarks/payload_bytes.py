"""Report section 2: bytes per image, counted from serialised request messages.

Two geometries:

* the embedded tiny LLaVA (64 tokens x 128 at the cut, 128-px images): real ShapesVQA test
  images through the real edge half and the trained codecs;
* LLaVA-1.5-7B (CLIP ViT-L/14-336, 336-px images, 1024 channels): what crosses at its default
  cut (``vision_feature_layer`` -2, ``default`` strategy: CLS dropped, so 576 tokens, where the
  paper counted 577). No trained 7B codec exists here and none is needed for a size: a payload's
  length is fixed by tokens x bits x stages, so indices are packed with ``common.wire.packing`` and
  the real ``AnswerFromCodes`` messages (header with fingerprints + chunks) are serialised. The
  JPEG rows encode real photographs (scikit-image's samples) exactly as the model sees them
  (``common.imaging.policy.jpeg_baseline``, the one baseline function the edge and eval use too).

The question is excluded everywhere: it is the same few dozen bytes in every mode.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alignedvq.v1 import inference_pb2 as pb
from common.codec.aligned_vq import AlignedVQ, CodecConfig
from common.codec.encodings import (
    AlignedVQEncoding,
    FeatureEncoding,
    Fp16Encoding,
    Int8Encoding,
    wire_bytes,
)
from common.imaging.policy import jpeg_baseline
from common.paths import DEFAULT_MODEL_DIR
from common.wire.messages import codes_request_messages
from common.wire.packing import pack

JPEG_QUALITIES = (75, 90)
# llava-1.5-7b's cut (common/split/point.py SplitPoint): 24 CLIP blocks, features from block 23,
# CLS dropped at the feature layer -> 24 x 24 patches cross.
LLAVA7B = {"image_size": 336, "patch": 14, "dim": 1024, "blocks": 24, "feature_layer": 23}
# scikit-image ships these photographs inside its wheel (no download).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera")
# docs/design.md: the paper's figures (577 tokens: it counted CLS).
PAPER = {"alignedvq 12 bits": 865.5, "fp16 features": 1_181_696,
         "note": "577 x 12 bit = 865.5 B vs 1,181,696 B of fp16 features (the paper's "
                 "'1365x'); the paper reports ~96.8 % fewer bytes than a JPEG-90 upload"}


def image_request_bytes(jpeg: bytes) -> int:
    return len(pb.AnswerFromImageRequest(image=jpeg).SerializeToString())


def sample_photos() -> dict[str, Image.Image]:
    from skimage import data

    photos = {}
    for name in PHOTOS:
        array = getattr(data, name)()
        photos[name] = Image.fromarray(np.asarray(array)).convert("RGB")
    return photos


def _request_bytes(enc: FeatureEncoding, chunks: list[bytes], vision_fp: str,
                   codec_fp: str = "") -> int:
    """Serialised bytes of one image's ``AnswerFromCodes`` stream in ``enc`` (no question)."""
    return wire_bytes(codes_request_messages(enc.encoding, enc.tokens, enc.bits, enc.stages,
                                             chunks, vision_fp, codec_fp))


def _stats(values: list[int]) -> dict:
    return {"bytes_mean": statistics.fmean(values), "bytes_median": statistics.median(values),
            "bytes_min": min(values), "bytes_max": max(values), "images": len(values)}


def _row(encoding: str, values: list[int], fp16: float, **extra) -> dict:
    s = _stats(values)
    return {"encoding": encoding, **s, "ratio_vs_fp16": fp16 / s["bytes_mean"], **extra}


def tiny_rows(test_questions: Path, codecs: dict, limit: int) -> dict:
    """Real images of the test split through the real edge half, one row per encoding."""
    from common.imaging.policy import open_image
    from common.split.vision import features_at_cut
    from edge_agent.torch_edge import EdgeHalf

    root = test_questions.resolve().parent
    rows_ = [json.loads(line) for line in test_questions.read_text().splitlines() if line]
    images = [open_image(root / r["image"]) for r in rows_[:limit]]
    edge = EdgeHalf(DEFAULT_MODEL_DIR, mode="fp16")
    feats = features_at_cut(edge.vision, edge.image_processor, images)
    sizes = {}
    for mode in ("fp16", "int8"):
        enc = Fp16Encoding(edge.tokens, feats.shape[-1]) if mode == "fp16" else \
            Int8Encoding(edge.tokens, feats.shape[-1])
        sizes[mode] = [_request_bytes(enc, enc.encode(f), edge.vision_fingerprint) for f in feats]
    fp16 = statistics.fmean(sizes["fp16"])
    rows = [_row("fp16 features", sizes["fp16"], fp16), _row("int8 features", sizes["int8"], fp16)]
    for (bits, stages), info in sorted(codecs.items(), key=lambda kv: kv[0][0] * kv[0][1]):
        vq = EdgeHalf(DEFAULT_MODEL_DIR, info["dir"], "alignedvq")
        # In slices: one (tokens x K) distance matrix for 600 images at K = 65,536 is 10 GB.
        values = [wire_bytes(vq.messages(chunks)) for part in feats.split(32)
                  for chunks in vq.encoding.encode_batch(part)]
        rows.append(_row(f"alignedvq {bits} bits" + (f" x {stages}" if stages > 1 else ""),
                         values, fp16, bits=bits, stages=stages,
                         index_bytes=sum(len(c) for c in vq.encoding.encode(feats[0]))))
    size = edge.vision.config.vision_config.image_size
    for q in JPEG_QUALITIES:
        rows.append(_row(f"JPEG q{q} (cloud-only)",
                         [image_request_bytes(jpeg_baseline(im, size, q)) for im in images], fp16,
                         quality=q))
    return {"geometry": f"embedded tiny LLaVA: {edge.tokens} tokens x {feats.shape[-1]}, "
                        f"{size}-px images", "tokens": edge.tokens, "dim": int(feats.shape[-1]),
            "image_size": size, "images": f"first {len(images)} images of {test_questions}",
            "rows": rows}


def llava7b_rows(rates) -> dict:
    from transformers import CLIPVisionConfig

    from common.split.point import SplitPoint

    g = LLAVA7B
    vc = CLIPVisionConfig(hidden_size=g["dim"], image_size=g["image_size"],
                          patch_size=g["patch"], num_hidden_layers=g["blocks"],
                          num_attention_heads=16, intermediate_size=4096)
    split = SplitPoint(g["blocks"], g["feature_layer"], g["feature_layer"], "default")
    tokens = split.tokens(vc)
    # Fingerprints are 8 bytes on the wire whatever the weights; these stand in for real ones.
    vision_fp = "0123456789abcdef"
    rng = np.random.default_rng(0)
    feats = torch.randn(tokens, g["dim"])
    fp16_enc, int8_enc = Fp16Encoding(tokens, g["dim"]), Int8Encoding(tokens, g["dim"])
    fp16 = _request_bytes(fp16_enc, fp16_enc.encode(feats), vision_fp)
    rows = [_row("fp16 features", [fp16], fp16, paper=PAPER["fp16 features"]),
            _row("int8 features", [_request_bytes(int8_enc, int8_enc.encode(feats), vision_fp)],
                 fp16)]
    for bits, stages in sorted(rates, key=lambda r: r[0] * r[1]):
        codec = AlignedVQ(CodecConfig(feature_dim=g["dim"], code_dim=32, bits=bits,
                                      stages=stages, tokens=tokens,
                                      split_layer=g["feature_layer"], vision_fingerprint=vision_fp))
        chunks = [pack(rng.integers(0, 1 << bits, tokens), bits) for _ in range(stages)]
        size = _request_bytes(AlignedVQEncoding(codec), chunks, vision_fp, codec.fingerprint())
        name = f"alignedvq {bits} bits" + (f" x {stages}" if stages > 1 else "")
        rows.append(_row(name, [size], fp16, bits=bits, stages=stages,
                         index_bytes=sum(map(len, chunks)),
                         paper=PAPER["alignedvq 12 bits"] if (bits, stages) == (12, 1) else None))
    photos = sample_photos()
    per_image = {}
    for q in JPEG_QUALITIES:
        values = []
        for name, photo in photos.items():
            n = image_request_bytes(jpeg_baseline(photo, g["image_size"], q))
            per_image.setdefault(name, {})[f"q{q}"] = n
            values.append(n)
        rows.append(_row(f"JPEG q{q} (cloud-only)", values, fp16, quality=q))
    return {"geometry": f"LLaVA-1.5-7B: CLIP ViT-L/14-336, {tokens} tokens x {g['dim']} at the "
                        f"default cut, {g['image_size']}-px images",
            "tokens": tokens, "dim": g["dim"], "image_size": g["image_size"],
            "images": "scikit-image sample photographs " + ", ".join(photos) +
                      " (resized and centre-cropped to 336 px like CLIPImageProcessor)",
            "jpeg_per_image": per_image, "rows": rows, "paper": PAPER}


def run(prepared: dict, rates, quick: bool) -> dict:
    return {"tiny": tiny_rows(prepared["test_questions"], prepared["codecs"],
                              limit=24 if quick else 600),
            "llava7b": llava7b_rows(rates)}
