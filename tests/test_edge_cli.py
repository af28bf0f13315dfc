"""edge-agent's CLI in-process, with no server: the error-to-exit-code table, the checks made
before anything goes on the wire, and which RPCs one question makes (a fake stub records them)."""

from __future__ import annotations

import argparse

import grpc
import pytest
from conftest import edge_agent_in_process

from alignedvq.v1 import inference_pb2 as pb
from common.imaging.policy import ImageRefused
from common.paths import SAMPLES_DIR
from edge_agent import cli
from edge_agent.client import IncompatibleServer
from edge_agent.retry import ConnectionRefusedByServer

IMAGE = str(SAMPLES_DIR / "images" / "sample1.png")


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize("error, code, message", [
    (ImageRefused("not an image"), 2, "edge-agent: cannot use the image: not an image"),
    (cli.BadInput("bad flag"), 2, "edge-agent: bad flag"),
    (IncompatibleServer("codec x"), 3, "edge-agent: incompatible server: codec x"),
    (FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "empty question"), 1,
     "edge-agent: INVALID_ARGUMENT: empty question"),
])
def test_the_exit_table(capsys, error, code, message):
    assert cli.exit_for(error, None) == code
    assert capsys.readouterr().err.splitlines() == [message]


def test_a_refused_connection_gets_the_tls_hint(capsys):
    error = ConnectionRefusedByServer(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "handshake"))
    assert cli.exit_for(error, None) == 1
    assert capsys.readouterr().err.splitlines() == ["edge-agent: UNAVAILABLE: handshake",
                                                    cli.TLS_HINT]


def test_an_error_not_in_the_table_is_left_as_a_bug():
    assert cli.exit_for(KeyError("x"), None) is None


def test_bad_flags_exit_2_before_anything_goes_on_the_wire():
    base = ("--image", IMAGE, "--question", "q", "--server", "127.0.0.1:1", "--no-wait")
    r = edge_agent_in_process(*base, "--runtime", "onnx", "--mode", "image")
    assert r.returncode == 2 and r.stderr.startswith(
        "edge-agent: --runtime onnx sends codebook indices only (--mode alignedvq), not --mode "
        "image")
    r = edge_agent_in_process(*base, "--request-id", "has spaces", "--mode", "image")
    assert r.returncode == 2 and "edge-agent: --request-id 'has spaces'" in r.stderr
    r = edge_agent_in_process("--image", "/nonexistent.png", "--question", "q", "--mode", "image")
    assert r.returncode == 2 and r.stderr.startswith("edge-agent: ")
    r = edge_agent_in_process(*base, "--runtime", "onnx", "--onnx-dir", "/nonexistent")
    assert r.returncode == 2 and r.stderr.startswith("edge-agent: ") and "export-edge" in r.stderr


class FakeEdge:
    mode, vision_fingerprint, codec_fingerprint = "alignedvq", "ab" * 8, "cd" * 8
    split_layer, image_size = 1, 32

    def __init__(self):
        self.encoded = 0  # images encoded

    def chunks(self, images):
        self.encoded += len(images)
        return [[b"\x01\x02"]]

    def messages(self, chunks, question="", max_new_tokens=0):
        return [pb.AnswerFromCodesRequest(header=pb.CodesHeader(question=question)),
                pb.AnswerFromCodesRequest(chunk=pb.CodesChunk(stage=0, packed_indices=chunks[0]))]


class FakeStub:
    """Records the RPCs; AnswerFromCodes answers ``codes_error`` or a summary."""

    def __init__(self, codes_error=None, info=None):
        self.calls, self.codes_error = [], codes_error
        self.info = info or pb.GetServerInfoResponse(
            vision_fingerprint=bytes.fromhex(FakeEdge.vision_fingerprint),
            codec_fingerprint=bytes.fromhex(FakeEdge.codec_fingerprint), image_size=32)

    def GetServerInfo(self, request, timeout=None, metadata=None):
        self.calls.append("GetServerInfo")
        return self.info

    def AnswerFromCodes(self, messages, timeout=None, metadata=None):
        self.calls.append("AnswerFromCodes")
        list(messages)
        if self.codes_error:
            raise self.codes_error
        return iter([pb.AnswerFromCodesResponse(summary=pb.AnswerSummary(answer="five"))])


def session(stub, **flags) -> cli.Session:
    args = argparse.Namespace(mode="alignedvq", json=True, question="how many?",
                              max_new_tokens=0, check_server=False, **flags)
    return cli.Session(args, image=None, edge=FakeEdge(), channel=None, stub=stub,
                       retry=lambda invoke: invoke(5.0), metadata=())


def test_codes_mode_makes_one_rpc():
    stub = FakeStub()
    assert cli.ask(session(stub)).answer == "five"
    assert stub.calls == ["AnswerFromCodes"]


def test_check_server_asks_server_info_first_and_refuses_locally():
    stub = FakeStub()
    s = session(stub)
    s.args.check_server = True
    cli.ask(s)
    assert stub.calls == ["GetServerInfo", "AnswerFromCodes"]
    stub = FakeStub(info=pb.GetServerInfoResponse(vision_fingerprint=bytes(8)))
    s = session(stub)
    s.args.check_server = True
    with pytest.raises(IncompatibleServer, match="server runs vision weights 0000000000000000"):
        cli.ask(s)
    assert stub.calls == ["GetServerInfo"]  # refused before sending anything
    assert s.edge.encoded == 0              # or encoding anything


def test_the_servers_failed_precondition_is_incompatible_server(capsys):
    details = "the request was encoded with codec cdcd, this server decodes codec 0101"
    stub = FakeStub(codes_error=FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, details))
    with pytest.raises(IncompatibleServer) as refused:
        cli.ask(session(stub))
    assert stub.calls == ["AnswerFromCodes"]
    assert cli.exit_for(refused.value, None) == 3
    assert capsys.readouterr().err.strip() == (
        f"edge-agent: incompatible server: the server refused the request: {details}")


def test_other_statuses_stay_grpc_errors():
    stub = FakeStub(codes_error=FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    with pytest.raises(grpc.RpcError):
        cli.ask(session(stub))
