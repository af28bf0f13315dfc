"""examples/node-client against a live cloud-server: the Python edge answers a question and dumps
its request (`edge-agent --dump-payload`); the Node.js client, which knows only the .proto,
asks GetServerInfo and replays those bytes; both must get the same answer.

The server serves TLS and requires a bearer token, so the Node client's `--tls-ca` and
`--auth-token-file` are exercised too (its plaintext path by the unreachable-server check).
Needs `node` on PATH and `make install` (npm ci in examples/node-client); CI has both."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import cli
from test_security import make_pki  # throwaway CA + server certificate for 127.0.0.1

from alignedvq.server_process import ServerProcess
from alignedvq.v1 import inference_pb2 as pb
from common.paths import REPO_ROOT, SAMPLES_DIR

CLIENT_DIR = REPO_ROOT / "examples" / "node-client"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not on PATH (the Node.js client "
                                "needs Node >= 18; CI has it)")
pytestmark = [pytestmark, pytest.mark.integration]  # a TLS cloud-server and Node.js processes
TOKEN = "node-client-test-token"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_file(pki) -> Path:
    path = pki["ca"].parent / "tokens"
    path.write_text(f"# accepted tokens\n{TOKEN}\n")
    return path


@pytest.fixture(scope="module")
def server(pki, token_file):
    if not (CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{CLIENT_DIR}/node_modules is missing: run `make install` (npm ci)")
    with ServerProcess("--tls-cert", str(pki["server_cert"]), "--tls-key",
                       str(pki["server_key"]), "--auth-token-file", str(token_file)) as s:
        s.wait_ready()
        s.tls = ["--tls-ca", str(pki["ca"])]
        yield s


def node_client(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, str(CLIENT_DIR / "client.js"), *args], capture_output=True,
                          text=True, timeout=timeout)


def python_edge(server, token_file, dump: Path, image: str, question: str, *extra: str) -> dict:
    result = subprocess.run(
        cli("edge-agent") + ["--server", server.address, *server.tls,
                             "--auth-token-file", str(token_file),
                             "--image", str(SAMPLES_DIR / "images" / image),
                             "--question", question, "--dump-payload", str(dump), "--json",
                             *(extra if "--mode" in extra else (*extra, "--mode", "alignedvq"))],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def codes_payload(server, token_file, tmp_path_factory):
    dump = tmp_path_factory.mktemp("payload") / "codes.json"
    edge = python_edge(server, token_file, dump, "sample1.png", "where is the green object?")
    return dump, edge


def test_replayed_codes_give_the_python_edges_answer(server, token_file, codes_payload):
    dump, edge = codes_payload
    result = node_client("--server", server.address, *server.tls, "--payload", str(dump),
                         "--json", "--auth-token-file", str(token_file))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert edge["answer"] == "bottom"  # common/models/samples/questions.jsonl
    assert out["answer"] == edge["answer"]
    assert out["streamed_text"].strip() == edge["answer"]
    # Byte for byte the Python edge's request: the same serialised size on both ends.
    assert out["payload_bytes"] == edge["payload_bytes"] == out["server_payload_bytes"]
    assert out["messages"] == 2  # header + one chunk (one residual stage)
    assert out["model_id"] == edge["model_id"] == "tiny-llava"
    assert out["bits"] == 12 and len(out["codec_fingerprint"]) == 16


def test_streaming_output_prints_server_info_and_the_answer(server, token_file, codes_payload):
    dump, edge = codes_payload
    result = node_client("--server", server.address, *server.tls, "--payload", str(dump),
                         "--auth-token-file", str(token_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == edge["answer"]
    assert "model tiny-llava" in result.stderr and "12 bits" in result.stderr


def test_replayed_image_upload_gives_the_python_edges_answer(server, token_file, tmp_path):
    dump = tmp_path / "image.json"
    edge = python_edge(server, token_file, dump, "sample3.jpg", "where is the red object?",
                       "--mode", "image")
    assert json.loads(dump.read_text())["method"].endswith("/AnswerFromImage")
    result = node_client("--server", server.address, *server.tls, "--payload", str(dump),
                         "--json", "--auth-token-file", str(token_file))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["answer"] == edge["answer"] == "top right"
    assert out["payload_bytes"] == edge["payload_bytes"]


def test_missing_token_is_a_clear_grpc_error(server, codes_payload):
    result = node_client("--server", server.address, *server.tls,
                         "--payload", str(codes_payload[0]))
    assert result.returncode == 1
    assert "UNAUTHENTICATED" in result.stderr, result.stderr


def test_wrong_ca_fails_with_a_tls_hint(server, pki, token_file, codes_payload):
    result = node_client("--server", server.address, "--tls-ca", str(pki["other_ca"]),
                         "--auth-token-file", str(token_file),
                         "--payload", str(codes_payload[0]), "--timeout", "10")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr and "--tls-ca must be the CA" in result.stderr


def test_bad_payload_is_refused_by_the_server(server, token_file, codes_payload, tmp_path):
    """A chunk one byte short: the server's INVALID_ARGUMENT comes back as exit status 1."""
    doc = json.loads(codes_payload[0].read_text())
    chunk = pb.AnswerFromCodesRequest.FromString(base64.b64decode(doc["messages_base64"][1]))
    chunk.chunk.packed_indices = chunk.chunk.packed_indices[:-1]
    doc["messages_base64"][1] = base64.b64encode(chunk.SerializeToString()).decode()
    bad = tmp_path / "short.json"
    bad.write_text(json.dumps(doc))
    result = node_client("--server", server.address, *server.tls, "--payload", str(bad),
                         "--auth-token-file", str(token_file))
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr, result.stderr


def test_unreachable_server_and_bad_arguments(tmp_path, codes_payload):
    # Port 1 on loopback: nothing listens there.
    result = node_client("--server", "127.0.0.1:1", "--payload", str(codes_payload[0]),
                         "--timeout", "10")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr, result.stderr
    not_json = tmp_path / "x.json"
    not_json.write_text("{}")
    result = node_client("--payload", str(not_json))
    assert result.returncode == 2 and "--dump-payload" in result.stderr, result.stderr
    result = node_client("--server", "127.0.0.1:1")
    assert result.returncode == 2 and "--payload FILE is required" in result.stderr
