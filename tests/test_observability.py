"""Metrics scraped from the real /metrics endpoint, JSON logs, and a request id that the edge
sets, the server logs and echoes back."""

import json
import re
import time
import urllib.request

import grpc
import pytest
from conftest import edge_agent_in_process

from alignedvq.server_process import ServerProcess
from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.paths import SAMPLES_DIR

pytestmark = pytest.mark.integration  # a cloud-server with metrics and JSON logs

IMAGE = str(SAMPLES_DIR / "images" / "sample1.png")


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--metrics-port", "0", "--log-format", "json") as s:
        s.wait_ready()
        yield s


def _metrics_url(server) -> str:
    for line in server.lines:
        found = re.search(r"metrics on (http://\S+)", line)
        if found:
            return found.group(1)
    raise AssertionError("no metrics line in:\n" + server.log())


def _scrape(server) -> dict[str, float]:
    text = urllib.request.urlopen(_metrics_url(server), timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def fixed_path(args: tuple) -> tuple:
    """``args`` with ``--mode alignedvq`` unless they name a mode: these tests count one fixed
    path's calls and metrics, which --mode auto (the default) would choose per request."""
    return args if "--mode" in args else (*args, "--mode", "alignedvq")


def _edge(server, *args):
    # edge-agent's main in this process: the request id and metadata code is the CLI's own,
    # without a subprocess's start-up per call.
    out = edge_agent_in_process("--server", server.address, "--image", IMAGE, "--json",
                                *fixed_path(args))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_request_id_set_by_the_edge_is_logged_and_echoed(server):
    result = _edge(server, "--question", "where is the green object?", "--request-id",
                   "camera-7/frame-42")
    assert result["request_id"] == "camera-7/frame-42"
    # The server logs before it sends the summary, but the thread reading its stderr may lag
    # behind a loaded machine.
    deadline = time.monotonic() + 10
    while True:
        logged = [json.loads(line) for line in list(server.stderr_lines) if line.startswith("{")]
        mine = [e for e in logged if e.get("request_id") == "camera-7/frame-42"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(mine) == 1
    assert mine[0]["code"] == "OK" and mine[0]["method"] == "AnswerFromCodes"
    assert mine[0]["mode"] == "alignedvq" and mine[0]["payload_bytes"] == result["payload_bytes"]
    assert mine[0]["level"] == "INFO" and mine[0]["time"].endswith("Z")


def test_a_missing_or_invalid_request_id_gets_a_fresh_one(server):
    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))
    with pytest.raises(grpc.RpcError) as err:  # refused requests carry an id too
        list(stub.AnswerFromImage(pb.AnswerFromImageRequest(question="what?"),
                                  metadata=(("x-request-id", "has spaces"),)))
    echoed = dict(err.value.initial_metadata())["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", echoed)


def test_metrics_count_requests_bytes_latency_and_tokens(server):
    before = _scrape(server)
    _edge(server, "--question", "how many objects are there?")
    _edge(server, "--question", "how many objects are there?", "--mode", "image")
    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))
    with pytest.raises(grpc.RpcError):
        list(stub.AnswerFromImage(pb.AnswerFromImageRequest(image=b"junk", question="what?")))
    after = _scrape(server)

    def grew(name):
        return after.get(name, 0) - before.get(name, 0)

    ok = 'alignedvq_requests_total{code="OK",method="AnswerFromCodes",mode="alignedvq"}'
    assert grew(ok) == 1
    assert grew('alignedvq_requests_total{code="OK",method="AnswerFromImage",mode="image"}') == 1
    assert grew('alignedvq_requests_total{code="INVALID_ARGUMENT",method="AnswerFromImage",'
                'mode="image"}') == 1
    assert grew('alignedvq_payload_bytes_count{mode="alignedvq"}') == 1
    # 64 tokens x 128 dims in fp16 = 16384 B against ~160 B sent: over 64x.
    assert grew('alignedvq_compression_ratio_bucket{le="64.0",mode="alignedvq"}') == 0
    assert grew('alignedvq_compression_ratio_count{mode="alignedvq"}') == 1
    assert grew('alignedvq_request_seconds_count{mode="alignedvq"}') == 1
    assert grew('alignedvq_time_to_first_token_seconds_count{mode="image"}') == 1
    assert grew("alignedvq_generated_tokens_total") >= 2
    assert "alignedvq_queue_depth" in after and "alignedvq_batch_size" in after


def _rpcs(samples: dict[str, float]) -> float:
    """Every call of the inference service the server counted, whatever method and outcome
    (GetServerInfo is counted though not logged)."""
    return sum(v for k, v in samples.items() if k.startswith("alignedvq_requests_total{"))


def _rpcs_of(server, *args) -> tuple[float, object]:
    before = _scrape(server)
    out = edge_agent_in_process("--server", server.address, "--image", IMAGE, "--json",
                                "--question", "how many objects are there?", *fixed_path(args))
    return _rpcs(_scrape(server)) - _rpcs(before), out


def test_one_question_is_one_rpc_in_codes_mode_and_two_in_image_mode(server):
    for args, expected in (((), 1), (("--mode", "fp16"), 1), (("--check-server",), 2),
                           (("--mode", "image"), 2)):
        count, out = _rpcs_of(server, *args)
        assert out.returncode == 0, out.stderr
        assert count == expected, args


@pytest.fixture(scope="module")
def foreign_codec(tmp_path_factory):
    """The shipped codec with one codebook entry moved: same vision weights, another
    fingerprint."""
    import shutil

    import torch

    from common.codec.aligned_vq import AlignedVQ
    from common.paths import DEFAULT_CODEC_DIR

    codec = tmp_path_factory.mktemp("codec") / "codec"
    shutil.copytree(DEFAULT_CODEC_DIR, codec)
    c = AlignedVQ.load(codec)
    with torch.no_grad():
        c.codebooks[0, 0] += 1.0
    c.save(codec)
    return str(codec)


def test_the_servers_refusal_of_a_foreign_codec_is_incompatible_server(server, foreign_codec):
    count, out = _rpcs_of(server, "--codec", foreign_codec)
    assert out.returncode == 3, out.stderr
    assert "edge-agent: incompatible server: the server refused the request" in out.stderr
    assert "this server decodes codec" in out.stderr  # the server's own details
    assert count == 1
    # --check-server refuses locally, after GetServerInfo only, with the local message.
    count, out = _rpcs_of(server, "--codec", foreign_codec, "--check-server")
    assert out.returncode == 3, out.stderr
    assert "edge-agent: incompatible server: server decodes codec" in out.stderr
    assert count == 1
