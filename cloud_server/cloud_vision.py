"""The cloud's share of the vision side of the split: the blocks after the cut, the CLS rule and
LLaVA's projector, read from the checkpoint by key."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from common.split.point import SplitError, SplitPoint
from common.split.weights import read_projector_tensors, read_vision_tensors


class CloudVision(nn.Module):
    """The cloud's share of the vision side: blocks ``[K, F)`` (none when the cut is the feature
    layer), the CLS rule, and LLaVA's projector. Features at the cut in, image embeddings (what
    ``get_image_features`` returns) out.

    ``split`` is the earliest cut served; a request cut later (a server serving several split
    points, cloud_server/split_points.py) starts at its own block of the same ``layers``, so
    each block is held once however many split points are served."""

    def __init__(self, split: SplitPoint, layers: nn.ModuleList, projector: nn.Module):
        super().__init__()
        self.split, self.layers, self.projector = split, layers, projector

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, config, split: SplitPoint,
                        device: str = "cpu", dtype: torch.dtype = torch.float32) -> "CloudVision":
        """Blocks ``[K, F)`` and the projector, read by key: the blocks before the cut and those
        past the feature layer are never read."""
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        vision_config = copy.deepcopy(config.vision_config)
        vision_config._attn_implementation = "sdpa"
        vision = cls(split, nn.ModuleList(CLIPEncoderLayer(vision_config)
                                          for _ in range(split.split_layer, split.feature_layer)),
                     LlavaMultiModalProjector(config))
        blocks, _ = read_vision_tensors(Path(model_dir), split.split_layer, split.feature_layer,
                                        with_embeddings=False)
        # encoder.layers.<absolute index>.<rest> -> layers.<index past the cut>.<rest>
        state = {f"layers.{int(k.split('.')[2]) - split.split_layer}.{k.split('.', 3)[3]}": v
                 for k, v in blocks.items()}
        state.update({f"projector.{k}": v for k, v in read_projector_tensors(model_dir).items()})
        missing, unexpected = vision.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SplitError(f"projector weights in {model_dir} do not match the config: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return vision.to(device=device, dtype=dtype).eval()

    def forward(self, features: torch.Tensor, split: SplitPoint | None = None) -> torch.Tensor:
        """``split``: where ``features`` were cut (default: the earliest cut, :attr:`split`)."""
        split = split or self.split
        skip = split.split_layer - self.split.split_layer
        if not 0 <= skip <= len(self.layers):
            raise SplitError(f"features cut at layer {split.split_layer}; this cloud holds the "
                             f"blocks from {self.split.split_layer} to {split.feature_layer}")
        h = features.to(next(self.projector.parameters()).dtype)
        for layer in self.layers[skip:]:
            h = layer(h, None)
        if split.cloud_drops_cls:
            h = h[:, 1:]
        return self.projector(h)
