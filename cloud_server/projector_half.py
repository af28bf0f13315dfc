"""The cloud half without its language model: feature decoding, the vision blocks after the cut
and the projector. For an engine that runs the language model itself (vLLM, in its own
process), so the server does not hold it a second time; :class:`cloud_server.cloud_half.CloudHalf`
is this plus the language model.

Like the edge, it reads only the tensors it needs from the checkpoint, by key: the vision blocks
``[K, F)`` and ``multi_modal_projector.*``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cloud_server.cloud_vision import CloudVision
from cloud_server.halves import CloudPreparer
from cloud_server.split_points import ServedSplit, load_split_points
from common.split.checkpoint import load_processor
from common.split.weights import vision_fingerprint as read_vision_fingerprint


class ProjectorHalf(CloudPreparer):
    """Every split point it serves (:mod:`cloud_server.split_points`) and the vision blocks after
    the earliest one, held once. The single-split attributes (``split``, ``tokens``, ``codec``,
    ``encodings``, ...) describe the default split point: what a client that names none (one
    older than contract v1.2) is served."""

    # The processor only builds prompts here; CloudHalf also batches them for generation.
    load_processor = staticmethod(load_processor)

    def __init__(self, model_dir: str | Path, codecs: Sequence[str | Path] | str | Path | None = (),
                 split_layer: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32,
                 vision_fingerprints: dict[int, str] | None = None):
        """``codecs``: the codec folders, one per split point, each served at the layer its
        ``codec.json`` records (one folder alone, or none: fp16/int8 features only, at
        ``split_layer``). ``split_layer`` names the default split point. ``vision_fingerprints``:
        those the caller has already read, by split layer (the server's image-upload path reads
        the blocks before the earliest cut), so they are not read again."""
        from transformers import AutoConfig

        model_dir = Path(model_dir)
        codec_dirs = ([] if codecs is None else [Path(codecs)] if isinstance(codecs, (str, Path))
                      else [Path(c) for c in codecs])
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        vision_config = config.vision_config
        self.device, self.dtype = torch.device(device), dtype
        self.processor = self.load_processor(model_dir)
        known = dict(vision_fingerprints or {})
        self.points, default = load_split_points(
            config, codec_dirs, split_layer,
            lambda split: known.get(split.split_layer) or read_vision_fingerprint(model_dir,
                                                                                  split))
        self.default_point = point = self.points[default]
        self.split, self.tokens = point.split, point.tokens
        self.vision_fingerprint, self.codec = point.vision_fingerprint, point.codec
        self.codec_fingerprint, self.encodings = point.codec_fingerprint, point.encodings
        self.dim = vision_config.hidden_size
        self.image_tokens = point.split.image_tokens(vision_config)
        self.text_hidden_size = config.text_config.hidden_size
        self.image_size = vision_config.image_size
        self.patch_size = vision_config.patch_size
        self.model_id = config.name_or_path.rstrip("/").split("/")[-1] or str(model_dir)
        earliest = self.points[min(self.points)].split
        self.vision = CloudVision.from_pretrained(model_dir, config, earliest, device, dtype)

    def point(self, split_layer: int | None = None) -> ServedSplit:
        """The split point at ``split_layer`` (None: the default one); KeyError if not served."""
        return self.default_point if split_layer is None else self.points[split_layer]

    def decode(self, mode: str, chunks: list[bytes], split_layer: int | None = None
               ) -> torch.Tensor:
        """Chunk payloads -> features at the cut (T, D); PayloadError if malformed. ``mode`` is
        one of the split point's encodings (validation refuses the others before this runs)."""
        return self.point(split_layer).encodings[mode].decode(chunks)

    @torch.inference_mode()
    def image_embeddings(self, features: torch.Tensor,
                         split_layer: int | None = None) -> torch.Tensor:
        """Features at the cut (B, T, D) -> LLaVA image embeddings (B, image_tokens, lm_hidden):
        the remaining vision blocks and the projector, what ``get_image_features`` returns."""
        return self.vision(features.to(self.device), self.point(split_layer).split)
