"""The edge half of llava-1.5-7b's geometry with random weights (CLIP ViT-L/14-336, cut at the
feature layer 23 of 24, 576 tokens, a 12-bit codec), built through the project's split exactly
as alignedvq/benchmarks/gpu_geometry.py builds it; ``shrink`` gives the same structure at toy size for
tests. Used by ``alignedvq bench edge`` and tests/test_onnx_edge.py to export and time it."""

from __future__ import annotations

import torch

from common.codec.aligned_vq import AlignedVQ, CodecConfig
from common.split.point import SplitPoint
from common.split.vision import EdgeVision
from edge_agent.edge_spec import Preprocess

# llava-hf/llava-1.5-7b-hf's preprocessor: CLIP's mean/std, bicubic, shortest edge = crop = 336.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def geometry_edge(shrink: bool = False, bits: int = 12, seed: int = 0,
                  split_layer: int | None = None) -> tuple[EdgeVision, AlignedVQ, Preprocess]:
    """``split_layer``: where to cut (default the feature layer); an earlier cut sends CLS too
    (577 tokens at the full geometry), as common/split/point.py says."""
    from alignedvq.benchmarks.gpu_geometry import llava_config

    torch.manual_seed(seed)
    config = llava_config(shrink)
    split = SplitPoint.from_config(config, split_layer)
    vc = config.vision_config
    vision = EdgeVision(vc, split).eval()
    # Random weights have no checkpoint to fingerprint; a fixed stand-in labels them.
    vision.fingerprint = "7b" * 8
    codec = AlignedVQ(CodecConfig(feature_dim=vc.hidden_size, code_dim=32, bits=bits, stages=1,
                                  tokens=split.tokens(vc), split_layer=split.split_layer,
                                  vision_fingerprint=vision.fingerprint,
                                  model_id="llava-1.5-7b-geometry")).eval()
    pre = Preprocess(shortest_edge=vc.image_size, crop_height=vc.image_size,
                     crop_width=vc.image_size, resample=3, image_mean=CLIP_MEAN,
                     image_std=CLIP_STD)
    return vision, codec, pre
