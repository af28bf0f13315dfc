"""Loading what the server needs, once, off the event loop: the cloud half (blocks after the
cut, projector, language model), the blocks before the cut for image uploads (the cloud-only
baseline runs them here), and the image processor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cloud_server.config import ServerConfig
from cloud_server.halves import CloudPreparer
from common.split.checkpoint import load_image_processor
from cloud_server.cloud_half import CloudHalf
from cloud_server.projector_half import ProjectorHalf
from common.split.vision import EdgeVision


@dataclass
class CloudModel:
    cloud: CloudPreparer      # CloudHalf (builtin engine) or ProjectorHalf (vLLM)
    vision: EdgeVision        # blocks [0, K) for AnswerFromImage
    image_processor: object   # the checkpoint's own resize/crop/normalise
    model_id: str

    def fp16_feature_bytes(self) -> int:
        """What the same tokens would cost as raw fp16 features: the compression reference."""
        return self.cloud.tokens * self.cloud.dim * 2


def load(config: ServerConfig) -> CloudModel:
    """Blocking (seconds to minutes): the server runs it on a worker thread."""
    device, dtype = config.resolved_device(), config.torch_dtype()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    if config.engine == "vllm":
        # vLLM runs the language model in its own process: hold only what comes before it.
        cloud = ProjectorHalf(config.model, config.codec, config.split_layer, device, dtype)
    else:
        cloud = CloudHalf(config.model, config.codec, config.split_layer, device, dtype)
    vision = EdgeVision.from_pretrained(config.model, config.split_layer, device, dtype)
    processor = load_image_processor(config.model)
    model = CloudModel(cloud, vision, processor, cloud.model_id)
    # The first upload should not pay for lazy initialisation of the vision path either.
    size = cloud.image_size
    cloud.image_embeddings(vision(torch.zeros(1, 3, size, size, device=device)))
    return model
