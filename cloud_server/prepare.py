"""A request's ``prepare``: its payload (feature chunks or an uploaded image) to LLaVA image
embeddings. Engines call it on their own worker thread, never on the event loop; bad payloads
raise InvalidRequest."""

from __future__ import annotations

import functools
import io
from typing import Callable

import torch
from PIL import Image

from cloud_server.engines.base import GenerationRequest
from cloud_server.errors import InvalidRequest
from cloud_server.loader import CloudModel
from common.codec.encodings import PayloadError
from common.imaging.policy import ImageRefused, load_model_input, processor_size
from common.split.vision import features_at_cut


class Preparer:
    def __init__(self, model: CloudModel, max_image_pixels: int):
        self.model, self.max_image_pixels = model, max_image_pixels

    # -- what the servicer hands the engine: the work, deferred to the engine's thread ------
    def from_codes(self, mode: str, chunks: list[bytes],
                   split_layer: int | None = None) -> Callable[[], torch.Tensor]:
        """``split_layer``: the split point the chunks were cut at (None: the default one)."""
        return functools.partial(self.codes_embeddings, mode, chunks, split_layer)

    def from_image(self, data: bytes,
                   max_pixels: int | None = None) -> Callable[[], torch.Tensor]:
        """``max_pixels``: the image policy's limit (default: --max-image-pixels)."""
        return functools.partial(self.image_embeddings, data,
                                 max_pixels or self.max_image_pixels)

    def warm_up_request(self) -> GenerationRequest:
        """A request made as an image upload's is (a mid-grey PNG of the model's square), so
        the engine's warm-up runs the stages an upload runs: image decoding, the image policy
        and processor, the vision blocks on both sides of the cut, the projector, prefill and a
        decode step. (Not warmed: the codec's decoding, and joining a running batch.) Its image
        passes whatever --max-image-pixels says: a server that refuses uploads must start."""
        size = processor_size(self.model.image_processor)
        png = io.BytesIO()
        Image.new("RGB", (size, size), (128, 128, 128)).save(png, format="PNG")
        return GenerationRequest("warm-up", "warm up", 2,
                                 self.from_image(png.getvalue(), max_pixels=size * size))

    # -- payload -> image embeddings (image_tokens, text_hidden_size) ----------------------
    @torch.inference_mode()
    def codes_embeddings(self, mode: str, chunks: list[bytes],
                         split_layer: int | None = None) -> torch.Tensor:
        cloud = self.model.cloud
        try:
            features = cloud.decode(mode, chunks, split_layer)
        except PayloadError as e:
            raise InvalidRequest(str(e)) from None
        return cloud.image_embeddings(features[None], split_layer)[0]

    @torch.inference_mode()
    def image_embeddings(self, data: bytes, max_pixels: int) -> torch.Tensor:
        if not data:
            raise InvalidRequest("the image is empty; send JPEG or PNG bytes")
        processor = self.model.image_processor
        try:
            # The edge's image policy (common/imaging/policy.py): the same refusals, conversions and
            # crop, in bounded memory, so both modes see the same pixels.
            image = load_model_input(data, processor_size(processor), max_pixels)
        except ImageRefused as e:
            raise InvalidRequest(f"{e}; send JPEG or PNG bytes") from None
        vision = self.model.vision
        features = features_at_cut(vision, processor, [image])
        return self.model.cloud.image_embeddings(features, vision.split.split_layer)[0]
