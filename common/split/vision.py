"""The vision side of the split as modules: the edge's blocks before the cut, and the cloud's
blocks after it with the projector."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from common.split.point import SplitError, SplitPoint
from common.split.weights import read_projector_tensors, read_vision_tensors


class EdgeVision(nn.Module):
    """CLIP embeddings and blocks ``[0, K)``: pixels in, the hidden state at the cut out."""

    def __init__(self, vision_config, split: SplitPoint, fingerprint: str = "", config=None):
        """``fingerprint`` identifies the weights loaded (see :func:`vision_fingerprint`);
        ``config`` is the whole LLaVA config they came from (None for a bare tower)."""
        super().__init__()
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPVisionEmbeddings

        self.split, self.fingerprint, self.config = split, fingerprint, config
        self.embeddings = CLIPVisionEmbeddings(vision_config)
        self.pre_layrnorm = nn.LayerNorm(vision_config.hidden_size,
                                         eps=vision_config.layer_norm_eps)
        self.layers = nn.ModuleList(CLIPEncoderLayer(vision_config)
                                    for _ in range(split.split_layer))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, split_layer: int | None = None,
                        device: str = "cpu", dtype: torch.dtype = torch.float32) -> "EdgeVision":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        split = SplitPoint.from_config(config, split_layer)
        config.vision_config._attn_implementation = "sdpa"
        tensors, fingerprint = read_vision_tensors(Path(model_dir), 0, split.split_layer, True)
        edge = cls(config.vision_config, split, fingerprint, config)
        state = {k.replace("encoder.layers.", "layers."): v for k, v in tensors.items()}
        missing, unexpected = edge.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing or unexpected:
            raise SplitError(f"vision weights in {model_dir} do not match the config: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
        return edge.to(device=device, dtype=dtype).eval()

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.pre_layrnorm(self.embeddings(pixel_values.to(self.pre_layrnorm.weight.dtype)))
        for layer in self.layers:
            h = layer(h, None)
        return h if self.split.sends_cls else h[:, 1:]


def features_at_cut(vision: EdgeVision, image_processor, images) -> torch.Tensor:
    """Images -> the hidden state at the cut (B, T, D): the checkpoint's own resize, crop and
    normalisation (its image processor), then the blocks before the cut, on their device. The
    one way pixels become features, for the edge, the server's uploads and codec training."""
    pixels = image_processor(images=images, return_tensors="pt").pixel_values
    return vision(pixels.to(vision.pre_layrnorm.weight.device))


class CloudVision(nn.Module):
    """The cloud's share of the vision side: blocks ``[K, F)`` (none when the cut is the feature
    layer), the CLS rule, and LLaVA's projector. Features at the cut in, image embeddings (what
    ``get_image_features`` returns) out."""

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

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = features.to(next(self.projector.parameters()).dtype)
        for layer in self.layers:
            h = layer(h, None)
        if self.split.cloud_drops_cls:
            h = h[:, 1:]
        return self.projector(h)
