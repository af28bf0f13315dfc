"""``GetServerInfo``: what a client needs to build requests this server accepts, built here and
nowhere else."""

from __future__ import annotations

from alignedvq.v1 import inference_pb2 as pb
from cloud_server.config import ServerConfig
from cloud_server.loader import CloudModel
from common.wire.messages import fingerprint_bytes


def server_info(model: CloudModel, config: ServerConfig) -> pb.GetServerInfoResponse:
    c = model.cloud
    codec = c.codec.config if c.codec else None
    return pb.GetServerInfoResponse(
        model_id=c.model_id, vision_fingerprint=fingerprint_bytes(c.vision_fingerprint),
        codec_fingerprint=fingerprint_bytes(c.codec_fingerprint) if c.codec else b"",
        split_layer=c.split.split_layer, codebook_size=codec.codebook_size if codec else 0,
        bits=codec.bits if codec else 0, stages=codec.stages if codec else 0,
        tokens=c.tokens, image_size=c.image_size,
        max_question_chars=config.max_question_chars, max_new_tokens=config.max_new_tokens,
        max_message_bytes=config.max_message_bytes,
        # v1.1: the facts an FP16/INT8 client needs (protos/README.md).
        feature_dim=c.dim, feature_layer=c.split.feature_layer,
        vision_layers=c.split.num_layers, cls_included=c.split.sends_cls,
        patch_grid=c.image_size // c.patch_size,
        encodings=[e.encoding for e in c.encodings.values()],
        max_image_pixels=config.max_image_pixels,
        request_timeout_seconds=config.request_timeout_seconds)
