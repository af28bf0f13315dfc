"""The halves keep their interfaces: each edge is an EdgeEncoder and each cloud half a
CloudPreparer, providing every member itself (an explicit subclass that forgot a method would
otherwise inherit the protocol's empty one and pass isinstance)."""

from __future__ import annotations

import inspect

import pytest
import torch

from cloud_server.cloud_half import CloudHalf
from cloud_server.halves import CloudPreparer
from cloud_server.projector_half import ProjectorHalf
from common.codec.encodings import FeatureEncoding
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from common.wire.modes import FEATURE_MODES
from edge_agent.encoder import EdgeEncoder
from edge_agent.onnx_edge import OnnxEdge
from edge_agent.torch_edge import EdgeHalf


def _members(protocol) -> tuple[set[str], set[str]]:
    """(data attributes, methods) the protocol declares."""
    methods = {n for n, v in vars(protocol).items()
               if inspect.isfunction(v) and not n.startswith("_")}
    return set(protocol.__annotations__) - methods, methods


def _methods_are_its_own(cls, protocol) -> None:
    for name in _members(protocol)[1]:
        assert getattr(cls, name) is not getattr(protocol, name), f"{cls.__name__}.{name}"
        # Same parameters, in the same order, as the callers were promised.
        assert (list(inspect.signature(getattr(cls, name)).parameters)
                == list(inspect.signature(getattr(protocol, name)).parameters)), name


def _provides(obj, protocol) -> None:
    data, _ = _members(protocol)
    assert isinstance(obj, protocol)
    missing = sorted(n for n in data if not hasattr(obj, n))
    assert not missing, f"{type(obj).__name__} lacks {missing}"
    _methods_are_its_own(type(obj), protocol)


@pytest.fixture(scope="module")
def cloud():
    return CloudHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)


@pytest.fixture(scope="module")
def projector():
    return ProjectorHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)


def test_the_torch_edge_is_an_edge_encoder():
    for mode in FEATURE_MODES:
        _provides(EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, mode), EdgeEncoder)


def test_the_onnx_edge_declares_every_edge_encoder_member():
    """Built from an exported graph (tests/test_onnx_edge.py constructs one); here the class."""
    data, _ = _members(EdgeEncoder)
    declared = set(OnnxEdge.__annotations__) | set(vars(OnnxEdge))
    assert data <= declared, sorted(data - declared)
    _methods_are_its_own(OnnxEdge, EdgeEncoder)


@pytest.mark.parametrize("half", ["cloud", "projector"])
def test_both_cloud_halves_are_cloud_preparers(half, request):
    _provides(request.getfixturevalue(half), CloudPreparer)


def test_the_cloud_half_keeps_what_the_builtin_engine_reads(cloud):
    assert hasattr(cloud.model, "generate") and callable(cloud.prompt)
    assert (cloud.device, cloud.dtype) == (cloud.model.device, cloud.model.dtype)


def test_both_halves_agree_and_build_each_encoding_once(cloud, projector):
    for name in ("tokens", "dim", "image_tokens", "text_hidden_size", "image_size",
                 "patch_size", "model_id", "vision_fingerprint", "codec_fingerprint"):
        assert getattr(cloud, name) == getattr(projector, name), name
    assert list(cloud.encodings) == list(FEATURE_MODES)
    features = torch.randn(1, cloud.tokens, cloud.dim)
    torch.testing.assert_close(cloud.image_embeddings(features),
                               projector.image_embeddings(features))


def test_decoding_a_request_builds_no_encoding(cloud, monkeypatch):
    chunks = {m: e.encode(torch.randn(cloud.tokens, cloud.dim)) for m, e in cloud.encodings.items()}
    monkeypatch.setattr(FeatureEncoding, "__init__",
                        lambda *args: pytest.fail("a FeatureEncoding was built per request"))
    for mode, payload in chunks.items():
        assert cloud.decode(mode, payload).shape == (cloud.tokens, cloud.dim)


@pytest.mark.parametrize("engine", ["builtin", "vllm"])
def test_server_start_reads_the_blocks_before_the_cut_once(engine, monkeypatch):
    """The image-upload path reads the blocks before the earliest cut, the cloud half those
    after it, each tensor once whatever the number of split points served (the shipped two);
    a later cut's fingerprint is hashed from disk, nothing of it kept. The language model is
    built without a vision tower."""
    from cloud_server import cloud_vision, loader
    from cloud_server.config import ServerConfig
    from common.split import vision, weights

    held, hashed = [], []
    real = weights.read_vision_tensors

    def counted(model_dir, first, stop, *args, **kwargs):
        (hashed if kwargs.get("fingerprint_only") else held).append((first, stop))
        return real(model_dir, first, stop, *args, **kwargs)

    monkeypatch.setattr(weights, "read_vision_tensors", counted)
    monkeypatch.setattr(vision, "read_vision_tensors", counted)
    monkeypatch.setattr(cloud_vision, "read_vision_tensors", counted)
    model = loader.load(ServerConfig.from_args(["--engine", engine]))
    default, early = model.cloud.split, model.cloud.points[1].split
    assert sorted(model.cloud.points) == [1, default.split_layer] and early.split_layer == 1
    assert sorted(held) == [(0, 1), (1, default.feature_layer)]
    assert hashed == [(0, default.split_layer)]
    assert model.cloud.points[1].vision_fingerprint == model.vision.fingerprint


def test_a_half_without_a_codec_offers_only_raw_features():
    half = ProjectorHalf(DEFAULT_MODEL_DIR)
    assert half.codec is None and half.codec_fingerprint == ""
    assert list(half.encodings) == [m for m in FEATURE_MODES if m != "alignedvq"]


def test_the_warm_up_passes_any_image_limit():
    """A server whose --max-image-pixels refuses every upload still warms up (and so starts);
    its uploads are refused as before."""
    from cloud_server import loader
    from cloud_server.config import ServerConfig
    from cloud_server.errors import InvalidRequest
    from cloud_server.prepare import Preparer

    model = loader.load(ServerConfig.from_args([]))
    preparer = Preparer(model, max_image_pixels=1)
    warm_up = preparer.warm_up_request()
    embeddings = warm_up.prepare()
    assert embeddings.shape == (model.cloud.image_tokens, model.cloud.text_hidden_size)
    image = (SAMPLES_DIR / "images" / "sample0.png").read_bytes()
    with pytest.raises(InvalidRequest, match="pixels"):
        preparer.from_image(image)()
