"""The cloud half without its language model: feature decoding, the vision blocks after the cut
and the projector. For an engine that runs the language model itself (vLLM, in its own
process), so the server does not hold it a second time.

Like the edge (common/split.py), it reads only the tensors it needs from the checkpoint, by key:
the vision blocks ``[K, F)`` and ``multi_modal_projector.*``. It offers the attributes of
:class:`common.pipeline.CloudHalf` the server uses (decode, image_embeddings, fingerprints,
tokens, the processor for the prompt), so the rest of the server does not know which it holds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.codec.aligned_vq import AlignedVQ
from common.split.checkpoint import load_processor
from common.codec.encodings import make_encoding
from common.split.vision import CloudVision
from common.split.point import SplitError, SplitPoint
from common.split.weights import _safetensors_files, read_vision_tensors, vision_fingerprint

_PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")


def read_projector_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for path in _safetensors_files(Path(model_dir)):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                for prefix in _PROJECTOR_PREFIXES:
                    if key.startswith(prefix):
                        tensors[key[len(prefix):]] = f.get_tensor(key)
    return tensors


class _Model:
    """What the server reads of a loaded LLaVA's ``model`` attribute (its config, device and
    dtype) when no language model is loaded."""

    def __init__(self, config, device: torch.device, dtype: torch.dtype):
        self.config, self.device, self.dtype = config, device, dtype


class ProjectorHalf:
    def __init__(self, model_dir: str | Path, codec_dir: str | Path | None = None,
                 split_layer: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        from transformers import AutoConfig
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        model_dir = Path(model_dir)
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        config.vision_config._attn_implementation = "sdpa"
        self.processor = load_processor(model_dir)
        self.split = split = SplitPoint.from_config(config, split_layer)
        self.vision_fingerprint = vision_fingerprint(model_dir, split)
        self.tokens = split.tokens(config.vision_config)
        self.dim = config.vision_config.hidden_size
        self.image_tokens = split.image_tokens(config.vision_config)
        self.text_hidden_size = config.text_config.hidden_size
        self.image_size = config.vision_config.image_size
        self.patch_size = config.vision_config.patch_size
        self.model_id = config.name_or_path.rstrip("/").split("/")[-1] or str(model_dir)
        vision = CloudVision(split, nn.ModuleList(CLIPEncoderLayer(config.vision_config)
                                                  for _ in range(split.split_layer,
                                                                 split.feature_layer)),
                             LlavaMultiModalProjector(config))
        blocks, _ = read_vision_tensors(model_dir, split.split_layer, split.feature_layer,
                                        with_embeddings=False)
        state = {f"layers.{int(k.split('.')[2]) - split.split_layer}.{k.split('.', 3)[3]}": v
                 for k, v in blocks.items()}
        state.update({f"projector.{k}": v for k, v in read_projector_tensors(model_dir).items()})
        missing, unexpected = vision.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SplitError(f"projector weights in {model_dir} do not match the config: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.vision = vision.to(device=device, dtype=dtype).eval()
        self.model = _Model(config, torch.device(device), dtype)
        self.codec = None
        if codec_dir is not None:
            self.codec = AlignedVQ.load(codec_dir, expect_fingerprint=self.vision_fingerprint,
                                        expect_split_layer=split.split_layer)
        self.codec_fingerprint = self.codec.fingerprint() if self.codec else ""

    def decode(self, mode: str, chunks: list[bytes]) -> torch.Tensor:
        return make_encoding(mode, self.codec, self.tokens, self.dim).decode(chunks)

    @torch.inference_mode()
    def image_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """Features at the cut (B, T, D) -> LLaVA image embeddings (B, image_tokens, lm_hidden)."""
        return self.vision(features.to(self.model.device))
