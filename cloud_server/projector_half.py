"""The cloud half without its language model: feature decoding, the vision blocks after the cut
and the projector. For an engine that runs the language model itself (vLLM, in its own
process), so the server does not hold it a second time; :class:`cloud_server.cloud_half.CloudHalf`
is this plus the language model.

Like the edge, it reads only the tensors it needs from the checkpoint, by key: the vision blocks
``[K, F)`` and ``multi_modal_projector.*``."""

from __future__ import annotations

from pathlib import Path

import torch

from cloud_server.cloud_vision import CloudVision
from cloud_server.halves import CloudPreparer
from common.codec.aligned_vq import AlignedVQ
from common.codec.encodings import FeatureEncoding, feature_encodings
from common.split.checkpoint import load_processor
from common.split.point import SplitPoint
from common.split.weights import vision_fingerprint as read_vision_fingerprint


class ProjectorHalf(CloudPreparer):
    # The processor only builds prompts here; CloudHalf also batches them for generation.
    load_processor = staticmethod(load_processor)

    def __init__(self, model_dir: str | Path, codec_dir: str | Path | None = None,
                 split_layer: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, vision_fingerprint: str | None = None):
        """``vision_fingerprint``: that of the blocks before the cut, when the caller has already
        read them (the server's image-upload path does), so they are not read again for it."""
        from transformers import AutoConfig

        model_dir = Path(model_dir)
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        vision_config = config.vision_config
        self.device, self.dtype = torch.device(device), dtype
        self.processor = self.load_processor(model_dir)
        self.split = split = SplitPoint.from_config(config, split_layer)
        self.vision_fingerprint = vision_fingerprint or read_vision_fingerprint(model_dir, split)
        self.tokens = split.tokens(vision_config)
        self.dim = vision_config.hidden_size
        self.image_tokens = split.image_tokens(vision_config)
        self.text_hidden_size = config.text_config.hidden_size
        self.image_size = vision_config.image_size
        self.patch_size = vision_config.patch_size
        self.model_id = config.name_or_path.rstrip("/").split("/")[-1] or str(model_dir)
        self.vision = CloudVision.from_pretrained(model_dir, config, split, device, dtype)
        self.codec = None
        if codec_dir is not None:
            self.codec = AlignedVQ.load(codec_dir, expect_fingerprint=self.vision_fingerprint,
                                        expect_split_layer=split.split_layer)
        self.codec_fingerprint = self.codec.fingerprint() if self.codec else ""
        self.encodings: dict[str, FeatureEncoding] = feature_encodings(self.codec, self.tokens,
                                                                        self.dim)

    def decode(self, mode: str, chunks: list[bytes]) -> torch.Tensor:
        """Chunk payloads -> features at the cut (T, D); PayloadError if malformed. ``mode`` is
        one of :attr:`encodings` (validation refuses the others before this runs)."""
        return self.encodings[mode].decode(chunks)

    @torch.inference_mode()
    def image_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """Features at the cut (B, T, D) -> LLaVA image embeddings (B, image_tokens, lm_hidden):
        the remaining vision blocks and the projector, what ``get_image_features`` returns."""
        return self.vision(features.to(self.device))
