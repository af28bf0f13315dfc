"""The contract in protos/ is enough: examples/node-client/contract.js, which knows only the
.proto and protos/README.md, builds FP16, INT8 and AlignedVQ requests from scratch and reads
`edge-agent --dump-payload` files, against a real cloud-server; its answers must be the Python
edge's.

The inputs Node gets are plain data, not our messages: float32 features (tokens x feature_dim,
taken from the Python edge's own FP16 request) and codebook indices as JSON (unpacked from the
Python edge's AlignedVQ request). Node packs, converts to float16, quantises and fills the
headers itself, from GetServerInfo's answer.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import queue
import shutil
import subprocess

import grpc
import numpy as np
import pytest

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.paths import REPO_ROOT, SAMPLES_DIR
from common.wire.packing import unpack

CLIENT_DIR = REPO_ROOT / "examples" / "node-client"
NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = pytest.mark.skipif(NODE is None or NPM is None,
                                reason="node/npm are not on PATH (CI has them)")
pytestmark = [pytestmark, pytest.mark.integration]  # a cloud-server and Node.js processes
IMAGE = SAMPLES_DIR / "images" / "sample1.png"
QUESTION = "where is the green object?"


@pytest.fixture(scope="module")
def server(default_server):
    if not (CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{CLIENT_DIR}/node_modules is missing: run `make install` (npm ci)")
    return default_server  # the session's shared server (tests/conftest.py)


def edge_agent(server, mode: str, dump=None) -> dict:
    """The Python edge (edge-agent's own main, in this process: no second model start-up)."""
    from edge_agent.cli import main

    args = ["--server", server.address, "--image", str(IMAGE), "--question", QUESTION,
            "--mode", mode, "--json"] + (["--dump-payload", str(dump)] if dump else [])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return json.loads(out.getvalue())


def decode_dump(path) -> list:
    doc = json.loads(path.read_text())
    return [pb.AnswerFromCodesRequest.FromString(base64.b64decode(m))
            for m in doc["messages_base64"]]


@pytest.fixture(scope="module")
def python(server, tmp_path_factory):
    """The Python edge's answers per mode, its dumps, and the plain inputs handed to Node."""
    d = tmp_path_factory.mktemp("contract")
    out = {"dir": d}
    for mode in ("alignedvq", "fp16", "image"):
        out[mode] = edge_agent(server, mode, d / f"{mode}.json")
    out["int8"] = edge_agent(server, "int8")
    fp16 = decode_dump(d / "fp16.json")
    out["fp16_chunk"] = fp16[1].chunk.packed_indices
    np.frombuffer(out["fp16_chunk"], "<f2").astype("<f4").tofile(d / "features.f32")
    codes = decode_dump(d / "alignedvq.json")
    h = codes[0].header
    out["alignedvq_chunks"] = [m.chunk.packed_indices for m in codes[1:]]
    out["indices"] = [unpack(c, h.tokens, h.bits).tolist() for c in out["alignedvq_chunks"]]
    (d / "indices.json").write_text(json.dumps(out["indices"]))
    out["header"] = h
    return out


def run_node(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, str(CLIENT_DIR / "contract.js"), *args, "--server",
                           server.address], capture_output=True, text=True, timeout=60)


def node(server, *args: str) -> dict:
    result = run_node(server, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_server_info_has_what_an_fp16_client_needs(server, python):
    info = node(server, "info")
    h = python["header"]
    assert info["vision_fingerprint"] == h.vision_fingerprint.hex()
    assert info["codec_fingerprint"] == h.codec_fingerprint.hex()
    assert (info["tokens"], info["bits"], info["stages"]) == (h.tokens, h.bits, h.stages)
    # The embedded model: CLIP 4 x 128, 128 px, patch 16, split at the feature layer, CLS dropped.
    assert (info["feature_dim"], info["feature_layer"], info["vision_layers"]) == (128, 4, 4)
    assert info["cls_included"] is False and info["patch_grid"] == 8
    assert info["tokens"] == info["patch_grid"] ** 2 + info["cls_included"]
    assert info["encodings"] == ["FEATURE_ENCODING_ALIGNEDVQ", "FEATURE_ENCODING_FP16",
                                 "FEATURE_ENCODING_INT8"]
    assert info["max_image_pixels"] > 0 and info["request_timeout_seconds"] > 0


def test_fp16_request_built_from_scratch(server, python):
    out = node(server, "fp16", "--features", str(python["dir"] / "features.f32"),
               "--question", QUESTION, "--request-id", "node-fp16")
    assert out["answer"] == python["fp16"]["answer"] == "bottom"
    assert out["streamed_text"].strip() == out["answer"]
    # float32 -> float16 in JavaScript gives back the Python edge's bytes exactly.
    assert bytes.fromhex(out["chunks_hex"][0]) == python["fp16_chunk"]
    assert out["request_id"] == out["echoed_request_id"] == "node-fp16"
    assert out["codec_fingerprint_bytes"] == out["codec_fingerprint"]
    assert out["prepare_ms"] > 0


def test_int8_request_built_from_scratch(server, python):
    out = node(server, "int8", "--features", str(python["dir"] / "features.f32"),
               "--question", QUESTION)
    assert out["answer"] == python["int8"]["answer"] == "bottom"
    # What the server reconstructs (q x scale) is the features to within one step per token.
    x = np.fromfile(python["dir"] / "features.f32", "<f4").reshape(64, 128)
    rows = np.frombuffer(bytes.fromhex(out["chunks_hex"][0]), np.uint8).reshape(64, 130)
    scale = rows[:, :2].copy().view("<f2").astype(np.float32)
    q = rows[:, 2:].copy().view(np.int8).astype(np.float32)
    assert np.all(np.abs(q * scale - x) <= scale * 0.5 + 1e-3 * np.abs(x) + 1e-6)


def test_alignedvq_request_built_from_scratch(server, python):
    out = node(server, "alignedvq", "--indices", str(python["dir"] / "indices.json"),
               "--question", QUESTION)
    assert out["answer"] == python["alignedvq"]["answer"] == "bottom"
    # Packing in JavaScript from protos/README.md gives the Python packer's bytes.
    assert [bytes.fromhex(c) for c in out["chunks_hex"]] == python["alignedvq_chunks"]


@pytest.mark.parametrize("mode", ["alignedvq", "fp16", "image"])
def test_dump_file_read_and_rebuilt(server, python, mode):
    out = node(server, "dump", "--payload", str(python["dir"] / f"{mode}.json"))
    assert out["answer"] == python[mode]["answer"]
    assert out["question"] == QUESTION
    assert out["dump_bytes"] == python[mode]["payload_bytes"]
    if mode == "alignedvq":
        assert out["indices"] == python["indices"]  # unpacked in JavaScript
        assert out["rpc"] == "AnswerFromCodes" and out["dump_messages"] == 2
    if mode == "image":
        assert out["rpc"] == "AnswerFromImage" and out["dump_messages"] == 1


def test_question_limit_counts_code_points(server, python):
    """max_question_chars counts Unicode code points: 1,001 emoji are 1,001 (not the 2,002
    UTF-16 units a JavaScript string's length says, nor 4,004 UTF-8 bytes)."""
    limit = node(server, "info")["max_question_chars"]
    result = run_node(server, "alignedvq", "--indices", str(python["dir"] / "indices.json"),
                      "--question", "\N{GRINNING FACE}" * (limit + 1))
    assert result.returncode == 1
    assert (f"INVALID_ARGUMENT: the question has {limit + 1} characters; at most {limit}"
            in result.stderr), result.stderr


def test_payload_bytes_are_what_node_sent(server, python):
    out = node(server, "alignedvq", "--indices", str(python["dir"] / "indices.json"),
               "--question", QUESTION)
    assert out["server_payload_bytes"] == out["sent_bytes"]


def test_no_answer_before_the_client_half_closes(server, python):
    """protos/README.md: the server answers AnswerFromCodes only once the stream is half-closed."""
    outbox: queue.Queue = queue.Queue()
    for message in decode_dump(python["dir"] / "alignedvq.json"):
        outbox.put(message)
    end = object()
    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))
    call = stub.AnswerFromCodes(iter(outbox.get, end), timeout=60)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        responses = pool.submit(list, call)
        # Every message is sent, the stream still open: nothing comes back.
        with pytest.raises(concurrent.futures.TimeoutError):
            responses.result(timeout=0.5)
        outbox.put(end)  # half-close
        assert responses.result(timeout=60)[-1].summary.answer == python["alignedvq"]["answer"]
