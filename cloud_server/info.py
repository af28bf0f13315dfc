"""``GetServerInfo``: what a client needs to build requests this server accepts, built here and
nowhere else."""

from __future__ import annotations

from alignedvq.v1 import inference_pb2 as pb
from cloud_server.config import ServerConfig
from cloud_server.loader import CloudModel
from cloud_server.split_points import ServedSplit
from common.wire.messages import fingerprint_bytes


def split_point_info(point: ServedSplit) -> pb.SplitPoint:
    codec = point.codec.config if point.codec else None
    return pb.SplitPoint(
        split_layer=point.split_layer,
        vision_fingerprint=fingerprint_bytes(point.vision_fingerprint),
        codec_fingerprint=fingerprint_bytes(point.codec_fingerprint) if codec else b"",
        codebook_size=codec.codebook_size if codec else 0, bits=codec.bits if codec else 0,
        stages=codec.stages if codec else 0, tokens=point.tokens,
        cls_included=point.split.sends_cls,
        encodings=[e.encoding for e in point.encodings.values()],
        coded_tokens=codec.coded_tokens if codec else 0)


def server_info(model: CloudModel, config: ServerConfig) -> pb.GetServerInfoResponse:
    c = model.cloud
    # The top-level fields describe the default split point, as they did before v1.2 (when a
    # server served one); split_points lists every one, the default first.
    default = split_point_info(c.default_point)
    others = [split_point_info(p) for p in c.points.values() if p is not c.default_point]
    return pb.GetServerInfoResponse(
        model_id=c.model_id, vision_fingerprint=default.vision_fingerprint,
        codec_fingerprint=default.codec_fingerprint, split_layer=default.split_layer,
        codebook_size=default.codebook_size, bits=default.bits, stages=default.stages,
        tokens=default.tokens, image_size=c.image_size,
        max_question_chars=config.max_question_chars, max_new_tokens=config.max_new_tokens,
        max_message_bytes=config.max_message_bytes,
        # v1.1: the facts an FP16/INT8 client needs (protos/README.md).
        feature_dim=c.dim, feature_layer=c.split.feature_layer,
        vision_layers=c.split.num_layers, cls_included=default.cls_included,
        patch_grid=c.image_size // c.patch_size, encodings=default.encodings,
        max_image_pixels=config.max_image_pixels,
        request_timeout_seconds=config.request_timeout_seconds,
        split_points=[default, *others],
        # v1.2: conversations (no handles, so no TTL, from a server that keeps no images).
        image_handle_ttl_seconds=(config.image_handle_ttl_seconds
                                  if config.image_cache_bytes else 0.0),
        max_history_turns=config.max_history_turns)
