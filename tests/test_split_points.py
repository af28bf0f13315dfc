"""One server, several split points (issue 22): the shipped codecs at split layers 4 and 1, each
request routed to its own cut, listed by GetServerInfo, and refused cleanly when it names one
the server does not serve."""

import json

import grpc
import pytest
from conftest import edge_agent_in_process
from transformers import AutoConfig

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from cloud_server.split_points import plan_split_layers
from common.codec.aligned_vq import AlignedVQ, CodecMismatchError
from common.imaging.policy import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, EARLY_CODEC_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf

ROW = json.loads((SAMPLES_DIR / "questions.jsonl").read_text().splitlines()[5])
SAMPLE, QUESTION = SAMPLES_DIR / ROW["image"], ROW["question"]


# --- which split points a set of codecs makes (no weights read) ----------------------------

@pytest.fixture(scope="module")
def model_config():
    return AutoConfig.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)


def test_each_codec_is_served_at_its_own_layer_the_first_by_default(model_config):
    assert plan_split_layers(model_config, [DEFAULT_CODEC_DIR, EARLY_CODEC_DIR], None) == \
        ([4, 1], 4)
    assert plan_split_layers(model_config, [DEFAULT_CODEC_DIR, EARLY_CODEC_DIR], 1) == ([4, 1], 1)
    assert plan_split_layers(model_config, [], None) == ([4], 4)  # fp16/int8 only
    assert plan_split_layers(model_config, [], 2) == ([2], 2)


def test_a_default_no_codec_was_trained_for_is_refused_naming_the_served_ones(model_config):
    with pytest.raises(CodecMismatchError, match=r"--split-layer 2 .* split layers 4 \(.*\), 1"):
        plan_split_layers(model_config, [DEFAULT_CODEC_DIR, EARLY_CODEC_DIR], 2)


def test_two_codecs_for_one_split_layer_are_refused(model_config, tmp_path):
    AlignedVQ.load(EARLY_CODEC_DIR).save(tmp_path)
    with pytest.raises(CodecMismatchError, match="both for split layer 1"):
        plan_split_layers(model_config, [EARLY_CODEC_DIR, tmp_path], None)


# --- the shared server (default flags: both shipped codecs) --------------------------------

@pytest.fixture(scope="module")
def stub(default_server):
    return pb_grpc.InferenceServiceStub(grpc.insecure_channel(default_server.address))


@pytest.fixture(scope="module")
def edges():
    return {4: EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR),
            1: EdgeHalf(DEFAULT_MODEL_DIR, EARLY_CODEC_DIR)}


def messages(edge, question=QUESTION, **header):
    msgs = edge.messages(edge.chunks([open_image(SAMPLE)])[0], question)
    for name, value in header.items():
        setattr(msgs[0].header, name, value)
    return msgs


@pytest.mark.integration
def test_server_info_lists_every_split_point_the_default_first(stub, edges):
    info = stub.GetServerInfo(pb.GetServerInfoRequest())
    assert [p.split_layer for p in info.split_points] == [4, 1]
    for point in info.split_points:
        edge = edges[point.split_layer]
        assert point.vision_fingerprint.hex() == edge.vision_fingerprint
        assert point.codec_fingerprint.hex() == edge.codec_fingerprint
        assert (point.tokens, point.bits, point.cls_included) == (
            edge.tokens, edge.codec.config.bits, edge.split.sends_cls)
    # The top-level fields are the default split point's, as an older client reads them.
    default = info.split_points[0]
    assert (info.split_layer, info.vision_fingerprint, info.codec_fingerprint, info.tokens) == (
        default.split_layer, default.vision_fingerprint, default.codec_fingerprint,
        default.tokens)


@pytest.mark.integration
def test_each_request_is_answered_at_its_own_cut(stub, edges):
    """Routed by the vision fingerprint the header has always carried, or by the split layer
    it names (v1.2); both answer the same, and the summary says where."""
    answers = {}
    for layer, edge in edges.items():
        for header in ({}, {"split_layer": layer}):
            msgs = messages(edge, **header)
            summary = list(stub.AnswerFromCodes(iter(msgs)))[-1].summary
            assert summary.split_layer == layer and summary.HasField("split_layer")
            assert summary.codec_fingerprint == edge.codec_fingerprint
            assert summary.payload_bytes == sum(m.ByteSize() for m in msgs)
            # The image's cost (the question aside): the shipped codecs' budget, a named split
            # layer 2 B more.
            image_bytes = sum(m.ByteSize() for m in messages(edge, question="", **header))
            assert image_bytes <= 130 + 2 * bool(header), image_bytes
            answers.setdefault(layer, set()).add(summary.answer)
    assert answers == {4: {ROW["answer"]}, 1: {ROW["answer"]}}, answers


@pytest.mark.integration
def test_a_split_point_not_served_is_refused_and_the_server_keeps_serving(stub, edges):
    for header, says in (({"split_layer": 2}, "serves split layers 4 (codec"),
                         # The named split point's weights are not the ones that encoded it.
                         ({"split_layer": 4}, "split layer 4")):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.AnswerFromCodes(iter(messages(edges[1], **header))))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert says in err.value.details(), err.value.details()
    assert list(stub.AnswerFromCodes(iter(messages(edges[1]))))[-1].summary.answer


@pytest.mark.integration
def test_probe_link_reports_what_arrived(stub):
    request = pb.ProbeLinkRequest(padding=bytes(5000))
    assert stub.ProbeLink(request).received_bytes == request.ByteSize()
    assert stub.ProbeLink(pb.ProbeLinkRequest()).received_bytes == 0


@pytest.mark.integration
def test_edge_agent_cuts_where_its_codec_was_trained(default_server):
    out = edge_agent_in_process("--server", default_server.address, "--image", str(SAMPLE),
                                "--question", QUESTION, "--codec", str(EARLY_CODEC_DIR),
                                "--mode", "alignedvq", "--check-server", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["answer"], result["split_layer"]) == (ROW["answer"], 1)
    out = edge_agent_in_process("--server", default_server.address, "--image", str(SAMPLE),
                                "--question", QUESTION, "--codec", str(EARLY_CODEC_DIR),
                                "--split-layer", "4")
    assert out.returncode == 2
    assert "trained for split layer 1" in out.stderr, out.stderr
