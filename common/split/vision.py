"""The vision blocks before the cut as a module (:class:`EdgeVision`), and the one way pixels
become features at the cut: the edge runs it, and so does the server for image uploads. The
cloud's blocks after the cut are :class:`cloud_server.cloud_vision.CloudVision`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.split.point import SplitError, SplitPoint
from common.split.weights import read_vision_tensors


class EdgeVision(nn.Module):
    """CLIP embeddings and blocks ``[0, K)``: pixels in, the hidden state at the cut out."""

    def __init__(self, vision_config, split: SplitPoint, fingerprint: str = "", config=None):
        """``fingerprint`` identifies the weights loaded (see
        :func:`common.split.weights.vision_fingerprint`); ``config`` is the whole LLaVA config
        they came from (None for a bare tower)."""
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
