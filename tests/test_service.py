"""The real cloud-server and edge-agent processes on loopback. (What each engine promises,
SIGTERM's drain included: tests/test_engine_contract.py.)"""

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import cli, edge_agent_in_process
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alignedvq.evaluation.evaluate import answer_batch
from alignedvq.server_process import ServerProcess
from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from cloud_server.cloud_half import CloudHalf
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf

pytestmark = pytest.mark.integration  # real cloud-server processes

ROWS = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def server(default_server):
    return default_server  # the session's shared server (tests/conftest.py)


@pytest.fixture(scope="module")
def stub(server):
    return pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))


def edge_agent(server, *args, timeout=180):
    """The real ``edge-agent`` process: for what is about the process (exit code, streams)."""
    return subprocess.run(cli("edge-agent") + ["--server", server.address, *args],
                          capture_output=True, text=True, timeout=timeout)


def edge_in_process(server, *args):
    """``edge-agent`` in this process (its main): the same code path to the server, without
    a subprocess's ~4 s of imports per call."""
    return edge_agent_in_process("--server", server.address, *args)


def assert_still_serves(stub):
    responses = list(stub.AnswerFromCodes(iter(valid_messages())))
    assert responses[-1].summary.answer


_EDGE = {}


def edge_half(mode="alignedvq"):
    if mode not in _EDGE:
        _EDGE[mode] = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, mode)
    return _EDGE[mode]


def valid_messages(question="how many objects are there?", image="sample2.png"):
    edge = edge_half()
    chunks = edge.chunks([open_image(SAMPLES_DIR / "images" / image)])[0]
    return edge.messages(chunks, question)


def _health_until_serving(s: ServerProcess) -> list:
    """The statuses the server's health service reports, from its first listening moment
    until SERVING (each change once)."""
    s.wait_listening()
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(s.address))
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = health.Check(health_pb2.HealthCheckRequest(service="")).status
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == health_pb2.HealthCheckResponse.SERVING:
            break
        time.sleep(0.02)
    return seen


@pytest.fixture(scope="module", autouse=True)
def starting_server():
    """A server of its own, started as the module begins: a thread watches its health from the
    moment it listens while the tests before its user's run."""
    with ServerProcess(wait=False) as s, ThreadPoolExecutor(1) as watcher:
        yield s, watcher.submit(_health_until_serving, s)


PLAIN_ARGS = ("--image", str(SAMPLES_DIR / "images/sample2.png"),
              "--question", "how many objects are there?", "--mode", "alignedvq")


def _mismatched_codec(folder):
    import shutil

    import torch

    from common.codec.aligned_vq import AlignedVQ

    shutil.copytree(DEFAULT_CODEC_DIR, folder)
    c = AlignedVQ.load(folder)
    with torch.no_grad():
        c.codebooks[0, 0] += 1.0
    c.save(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def agent_runs(server, tmp_path_factory):
    """The real ``edge-agent`` processes of the tests below, started together as the module
    begins (each pays its interpreter's start-up, ~4 s on one core, meanwhile)."""
    codec = _mismatched_codec(tmp_path_factory.mktemp("mismatched") / "codec")
    with ThreadPoolExecutor(2) as pool:
        yield {"plain": pool.submit(edge_agent, server, *PLAIN_ARGS),
               "mismatched codec": pool.submit(
                   edge_agent, server, "--image", str(SAMPLES_DIR / "images/sample0.png"),
                   "--question", "how many objects are there?", "--codec", str(codec),
                   "--mode", "alignedvq")}


def test_health_goes_from_not_serving_to_serving(starting_server):
    s, seen = starting_server
    assert seen.result() == [health_pb2.HealthCheckResponse.NOT_SERVING,
                             health_pb2.HealthCheckResponse.SERVING]
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(s.address))
    named = health.Check(health_pb2.HealthCheckRequest(
        service="alignedvq.v1.InferenceService")).status
    assert named == health_pb2.HealthCheckResponse.SERVING


def test_server_info(stub):
    info = stub.GetServerInfo(pb.GetServerInfoRequest())
    edge = edge_half()
    assert info.vision_fingerprint.hex() == edge.vision.fingerprint[:16]
    assert info.codec_fingerprint.hex() == edge.codec_fingerprint[:16]
    assert (info.bits, info.codebook_size, info.tokens) == (12, 4096, edge.tokens)


@pytest.fixture(scope="module")
def split_runs(server):
    """``edge-agent --json`` in this process for every sample question, alignedvq mode: what
    the split path's tests below check (each run is the same greedy request; once is enough)."""
    return [edge_in_process(server, "--image", str(SAMPLES_DIR / row["image"]), "--question",
                            row["question"], "--json", "--mode", "alignedvq") for row in ROWS]


def test_split_path_answers_equal_the_in_process_pipeline(split_runs):
    edge = edge_half()
    cloud = CloudHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)
    for row, out in zip(ROWS, split_runs):
        image = open_image(SAMPLES_DIR / row["image"])
        expected = cloud.answer(cloud.decode("alignedvq", edge.chunks([image])[0])[None],
                                [row["question"]])[0]
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["answer"] == expected
        assert result["mode"] == "alignedvq"
        for key in ("payload_bytes", "edge_ms", "network_ms", "cloud_ms", "total_ms"):
            assert result[key] >= 0, key
        assert result["payload_bytes"] == result["server_payload_bytes"]


def test_image_mode_answers_equal_the_monolithic_model_on_the_same_jpeg(server, embedded_model,
                                                                         tmp_path):
    model, processor = embedded_model  # the session's (tests/conftest.py), read only
    size = model.config.vision_config.image_size
    for row in ROWS[:4]:
        image = open_image(SAMPLES_DIR / row["image"])
        jpeg = tmp_path / "upload.jpg"
        jpeg.write_bytes(jpeg_baseline(image, size, 90))
        expected = answer_batch(model, processor, [open_image(jpeg)], [row["question"]])[0]
        out = edge_in_process(server, "--image", str(SAMPLES_DIR / row["image"]),
                              "--question", row["question"], "--mode", "image", "--json")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["mode"] == "image" and result["answer"] == expected


def test_split_path_sends_ten_times_fewer_bytes_and_agrees_with_cloud_only(server, split_runs):
    agree, vq_bytes, jpeg_bytes = 0, 0, 0
    for row, out in zip(ROWS, split_runs):
        vq = json.loads(out.stdout)
        jpeg = json.loads(edge_in_process(server, "--image", str(SAMPLES_DIR / row["image"]),
                                          "--question", row["question"], "--json", "--mode",
                                          "image").stdout)
        agree += vq["answer"] == jpeg["answer"]
        vq_bytes += vq["payload_bytes"]
        jpeg_bytes += jpeg["payload_bytes"]
    assert jpeg_bytes >= 10 * vq_bytes, (vq_bytes, jpeg_bytes)
    assert agree >= len(ROWS) - 1


def test_plain_output_streams_the_answer(server, agent_runs):
    out = agent_runs["plain"].result()
    assert out.returncode == 0, out.stderr
    as_json = json.loads(edge_in_process(server, *PLAIN_ARGS, "--json").stdout)
    assert out.stdout.strip() == as_json["answer"]
    assert "B sent" in out.stderr


def test_dump_payload_replays_to_the_same_answer(server, stub, tmp_path):
    import base64

    dump = tmp_path / "payload.json"
    out = edge_in_process(server, "--image", str(SAMPLES_DIR / "images/sample0.png"),
                          "--question", "what color is the triangle?", "--json",
                          "--mode", "alignedvq", "--dump-payload", str(dump))
    assert out.returncode == 0, out.stderr
    saved = json.loads(dump.read_text())
    assert saved["method"] == "/alignedvq.v1.InferenceService/AnswerFromCodes"
    messages = [pb.AnswerFromCodesRequest.FromString(base64.b64decode(m))
                for m in saved["messages_base64"]]
    assert sum(m.ByteSize() for m in messages) == json.loads(out.stdout)["payload_bytes"]
    replayed = list(stub.AnswerFromCodes(iter(messages)))
    assert replayed[-1].summary.answer == json.loads(out.stdout)["answer"]


def test_mismatched_codec_is_refused_before_inference(server, stub):
    messages = valid_messages()
    messages[0].header.codec_fingerprint = bytes(8)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.AnswerFromCodes(iter(messages)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "codec 0000000000000000" in err.value.details()
    assert_still_serves(stub)


def test_mismatched_codec_is_refused_at_the_edge_too(agent_runs):
    out = agent_runs["mismatched codec"].result()
    assert out.returncode == 3
    assert "incompatible server" in out.stderr


def test_any_image_pil_opens(server, tmp_path):
    from PIL import Image

    src = Image.open(SAMPLES_DIR / "images/sample2.png")
    variants = {"gray.png": src.convert("L"), "alpha.png": src.convert("RGBA"),
                "photo.jpg": src, "palette.gif": src.convert("P")}
    for name, im in variants.items():
        im.save(tmp_path / name)
    rotated = src.rotate(90, expand=True)
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the viewer undoes our rotation
    rotated.save(tmp_path / "exif.jpg", exif=exif, quality=95)
    for name in list(variants) + ["exif.jpg"]:
        out = edge_in_process(server, "--image", str(tmp_path / name), "--question",
                              "how many objects are there?", "--json", "--mode", "alignedvq")
        assert out.returncode == 0, (name, out.stderr)
        assert json.loads(out.stdout)["answer"], name
    exif_answer = json.loads(edge_in_process(server, "--image", str(tmp_path / "exif.jpg"),
                                             "--question", "where is the red object?",
                                             "--json", "--mode", "alignedvq").stdout)["answer"]
    plain_answer = json.loads(edge_in_process(server, "--image",
                                              str(SAMPLES_DIR / "images/sample2.png"),
                                              "--question", "where is the red object?",
                                              "--json", "--mode", "alignedvq").stdout)["answer"]
    assert exif_answer == plain_answer


def test_bad_uploads_get_invalid_argument_and_the_server_keeps_serving(stub):
    import io

    from PIL import Image

    huge = io.BytesIO()
    Image.new("L", (7000, 7000)).save(huge, format="PNG")  # 49 Mpx, over the 40 Mpx default
    cases = {b"not an image": "could not be decoded", huge.getvalue(): "at most 40000000"}
    for data, message in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            list(stub.AnswerFromImage(pb.AnswerFromImageRequest(image=data,
                                                               question="how many objects?")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
    assert_still_serves(stub)
