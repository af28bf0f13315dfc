"""The split points one server serves (issue 22): one per codec, each at the layer its own
``codec.json`` records, with that cut's tokens, vision fingerprint and encodings.

Why several: the best place to cut depends on the edge's speed and the link (an edge that runs
one CLIP block answers sooner on a fast link than one that runs all of them), and the edge
chooses per request (``edge-agent --mode auto``). The cloud holds the vision blocks after the
earliest cut once (:class:`cloud_server.cloud_vision.CloudVision`) and starts each request at its
own cut, so serving more split points costs a codec each, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common.codec.aligned_vq import AlignedVQ, CodecMismatchError
from common.codec.encodings import FeatureEncoding, feature_encodings
from common.split.point import SplitPoint


@dataclass(frozen=True)
class ServedSplit:
    """One split point: where the model is cut, what crosses there, and how it is decoded."""

    split: SplitPoint
    tokens: int                 # tokens that cross the wire at this cut
    vision_fingerprint: str     # of the weights before this cut
    codec: AlignedVQ | None     # None: fp16/int8 features only
    encodings: dict[str, FeatureEncoding]

    @property
    def split_layer(self) -> int:
        return self.split.split_layer

    @property
    def codec_fingerprint(self) -> str:
        return self.codec.fingerprint() if self.codec else ""


def plan_split_layers(config, codec_dirs: Sequence[Path],
                      split_layer: int | None) -> tuple[list[int], int]:
    """(every served split layer, the default one) from the codecs' own ``codec.json``, before
    any weight is read. Without codecs: one split point, ``split_layer`` or the feature layer.
    With codecs, ``split_layer`` only names the default among them (a client that names no split
    point is served there); one no codec was trained for is refused, naming the ones served."""
    if not codec_dirs:
        layer = SplitPoint.from_config(config, split_layer).split_layer
        return [layer], layer
    layers: dict[int, Path] = {}
    for codec_dir in codec_dirs:
        trained_for = AlignedVQ.read_config(codec_dir).split_layer
        layer = SplitPoint.from_config(config, trained_for).split_layer
        if layer in layers:
            raise CodecMismatchError(f"codecs {layers[layer]} and {codec_dir} are both for split "
                                     f"layer {layer}: serve one codec per split point")
        layers[layer] = Path(codec_dir)
    default = next(iter(layers))
    if split_layer is not None:
        default = SplitPoint.from_config(config, split_layer).split_layer
        if default not in layers:
            served = ", ".join(f"{k} ({d})" for k, d in layers.items())
            raise CodecMismatchError(
                f"--split-layer {split_layer} names the default split point, but no codec "
                f"given was trained for it; the codecs are for split layers {served} (each "
                f"codec's codec.json): leave --split-layer out, or name one of those")
    return list(layers), default


def load_split_points(config, codec_dirs: Sequence[Path], split_layer: int | None,
                      fingerprint_of) -> tuple[dict[int, ServedSplit], int]:
    """Each split point with its codec, checked against the weights before its cut.
    ``fingerprint_of(split)``: the vision fingerprint at that cut (the caller may already hold
    some). Returns ({split layer: point}, the default split layer), points in codec order."""
    layers, default = plan_split_layers(config, codec_dirs, split_layer)
    vision = config.vision_config
    points = {}
    for i, layer in enumerate(layers):
        split = SplitPoint.from_config(config, layer)
        fingerprint = fingerprint_of(split)
        codec = (AlignedVQ.load(codec_dirs[i], expect_fingerprint=fingerprint,
                                expect_split_layer=layer) if codec_dirs else None)
        tokens = split.tokens(vision)
        points[layer] = ServedSplit(split, tokens, fingerprint, codec,
                                    feature_encodings(codec, tokens, vision.hidden_size))
    return points, default


def describe_points(points: dict[int, ServedSplit]) -> str:
    """"4 (codec 4fcc284e0e5d8fad), 1 (codec ...)": the split points served, for logs and
    refusals."""
    return ", ".join(f"{k} (codec {p.codec_fingerprint or 'none'})" for k, p in points.items())
