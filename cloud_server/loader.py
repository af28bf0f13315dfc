"""Loading what the server needs, once, off the event loop: the blocks before the cut for image
uploads (the cloud-only baseline runs them here), the cloud half (blocks after the cut,
projector, language model) and the image processor. Each vision tensor is read from the
checkpoint once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cloud_server.cloud_half import CloudHalf
from cloud_server.config import ServerConfig
from cloud_server.halves import CloudPreparer
from cloud_server.projector_half import ProjectorHalf
from cloud_server.split_points import plan_split_layers
from common.split.vision import EdgeVision
from common.wire.modes import FP16


@dataclass
class CloudModel:
    cloud: CloudPreparer      # CloudHalf (builtin engine) or ProjectorHalf (vLLM)
    vision: EdgeVision        # blocks [0, K) of the earliest split point, for uploads
    image_processor: object   # the checkpoint's own resize/crop/normalise

    def fp16_feature_bytes(self) -> int:
        """What the same tokens would cost as raw fp16 features: the compression reference."""
        return self.cloud.encodings[FP16].payload_size()


def earliest_split_layer(config: ServerConfig) -> int:
    """The earliest cut the server serves, from the codecs' codec.json (no weight read)."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(config.model, local_files_only=True)
    layers, _ = plan_split_layers(model_config, [Path(c) for c in config.codec],
                                  config.split_layer)
    return min(layers)


def load(config: ServerConfig) -> CloudModel:
    """Blocking (seconds to minutes): the server runs it on a worker thread."""
    device, dtype = config.resolved_device(), config.torch_dtype()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    # Blocks [0, K) of the earliest split point served: an upload runs them, then the cloud
    # half's blocks from there on. Read first, so the cloud half takes their fingerprint instead
    # of reading them again.
    vision = EdgeVision.from_pretrained(config.model, earliest_split_layer(config), device, dtype)
    # vLLM runs the language model in its own process: hold only what comes before it.
    half = ProjectorHalf if config.engine == "vllm" else CloudHalf
    cloud = half(config.model, config.codec, config.split_layer, device, dtype,
                 vision_fingerprints={vision.split.split_layer: vision.fingerprint})
    # The cloud half's processor already holds the checkpoint's image processor.
    processor = cloud.processor.image_processor
    # Warmed up by the engine's first request (cloud_server.prepare.Preparer.warm_up_request).
    return CloudModel(cloud, vision, processor)
