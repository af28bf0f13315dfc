"""``cloud-server --web-port`` without a browser: gRPC-Web calls from Python (aiohttp) against
a real server, checked against the same calls on its native gRPC port. The web port must refuse,
count and identify exactly as the native one does (it forwards to it), and
AnswerFromCodesBundle must answer and refuse exactly as the AnswerFromCodes stream."""

from __future__ import annotations

import asyncio
import base64
import re
import urllib.request

import aiohttp
import grpc
import pytest

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from cloud_server.web import grpc_web
from common.imaging.policy import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf

pytestmark = pytest.mark.integration  # a real cloud-server
SERVICE = "/alignedvq.v1.InferenceService/"


@pytest.fixture(scope="module")
def messages():
    """A valid AnswerFromCodes request (the Python edge's), as serialized messages."""
    edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, "alignedvq")
    chunks = edge.chunks([open_image(SAMPLES_DIR / "images" / "sample2.png")])[0]
    return [m.SerializeToString() for m in edge.messages(chunks, "how many objects are there?")]


def bundle(parts: list[bytes]) -> bytes:
    return pb.AnswerFromCodesBundleRequest(
        messages=[pb.AnswerFromCodesRequest.FromString(p) for p in parts]).SerializeToString()


async def web_call(server, method: str, request: bytes, token: str | None = "", text=False,
                   headers=None, raw_body: bytes | None = None):
    """(HTTP status, response headers, [message bytes], grpc-status, grpc-message)."""
    token = server.token if token == "" else token
    head = {"content-type": "application/grpc-web-text" if text else "application/grpc-web+proto",
            **({"authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    body = raw_body if raw_body is not None else grpc_web.frame(request)
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + SERVICE.lstrip("/") + method, headers=head,
                                data=base64.b64encode(body) if text else body) as r:
            data = await r.read()
            if text:  # one base64 string per frame written, each padded
                data = b"".join(base64.b64decode(g) for g in re.findall(rb"[A-Za-z0-9+/]+=*",
                                                                         data))
            frames, at, trailers = [], 0, {}
            while at < len(data):
                flag, n = int(data[at]), int.from_bytes(data[at + 1:at + 5], "big")
                payload = data[at + 5:at + 5 + n]
                at += 5 + n
                if flag & 0x80:
                    for line in payload.decode().split("\r\n"):
                        if ":" in line:
                            k, v = line.split(":", 1)
                            trailers[k.strip()] = v.strip()
                else:
                    frames.append(payload)
            return (r.status, r.headers, frames, int(trailers.get("grpc-status", -1)),
                    urllib.request.unquote(trailers.get("grpc-message", "")))


def call(server, *args, **kw):
    return asyncio.run(web_call(server, *args, **kw))


@pytest.fixture(scope="module")
def native(web_server):
    channel = grpc.insecure_channel(web_server.address)
    token = (("authorization", f"Bearer {web_server.token}"),)
    return pb_grpc.InferenceServiceStub(channel), token


def test_bundle_answers_as_the_stream_does_on_both_ports(web_server, native, messages):
    stub, token = native
    stream = list(stub.AnswerFromCodes(iter(pb.AnswerFromCodesRequest.FromString(m)
                                            for m in messages), metadata=token))[-1].summary
    one = list(stub.AnswerFromCodesBundle(pb.AnswerFromCodesBundleRequest.FromString(
        bundle(messages)), metadata=token))[-1].summary
    status, headers, frames, code, _ = call(web_server, "AnswerFromCodesBundle",
                                            bundle(messages),
                                            headers={"x-request-id": "web-test-1"})
    assert status == 200 and code == 0
    web = pb.AnswerFromCodesBundleResponse.FromString(frames[-1]).summary
    assert stream.answer == one.answer == web.answer == "five"
    # Counted as it arrived: the bundle is the stream's messages plus 2 bytes each.
    assert stream.payload_bytes == sum(map(len, messages))
    assert one.payload_bytes == web.payload_bytes == len(bundle(messages))
    assert web.payload_bytes == stream.payload_bytes + 2 * len(messages)
    # The client's request id, in the response headers and the summary.
    assert headers["x-request-id"] == "web-test-1" == web.request_id


@pytest.mark.parametrize("order", ["chunk first", "two headers", "no chunk", "empty"])
def test_bundle_refuses_with_the_streams_code_and_message(web_server, native, messages, order):
    parts = {"chunk first": [messages[1], messages[0]], "two headers": [messages[0]] * 2,
             "no chunk": [messages[0]], "empty": []}[order]
    stub, token = native
    with pytest.raises(grpc.RpcError) as stream:
        list(stub.AnswerFromCodes(iter(pb.AnswerFromCodesRequest.FromString(p) for p in parts),
                                  metadata=token))
    with pytest.raises(grpc.RpcError) as one:
        list(stub.AnswerFromCodesBundle(pb.AnswerFromCodesBundleRequest.FromString(
            bundle(parts)), metadata=token))
    _, _, frames, code, message = call(web_server, "AnswerFromCodesBundle", bundle(parts))
    assert stream.value.code() == one.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not frames
    assert stream.value.details() == one.value.details() == message


def test_a_wrong_fingerprint_is_failed_precondition_over_the_web_too(web_server, messages):
    header = pb.AnswerFromCodesRequest.FromString(messages[0])
    header.header.vision_fingerprint = bytes(8)
    _, _, _, code, message = call(web_server, "AnswerFromCodesBundle",
                                  bundle([header.SerializeToString(), messages[1]]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION.value[0], message


def test_tokens_are_the_native_ports(web_server):
    request = pb.GetServerInfoRequest().SerializeToString()
    _, headers, frames, code, message = call(web_server, "GetServerInfo", request, token=None)
    assert code == grpc.StatusCode.UNAUTHENTICATED.value[0] and not frames
    assert "bearer token" in message and "x-request-id" not in headers
    _, _, _, code, _ = call(web_server, "GetServerInfo", request, token="not-the-token")
    assert code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    _, _, frames, code, _ = call(web_server, "GetServerInfo", request)
    assert code == 0 and pb.GetServerInfoResponse.FromString(frames[0]).tokens == 64


def test_text_mode(web_server):
    _, headers, frames, code, _ = call(web_server, "GetServerInfo",
                                       pb.GetServerInfoRequest().SerializeToString(), text=True)
    assert code == 0 and headers["content-type"].startswith("application/grpc-web-text")
    assert pb.GetServerInfoResponse.FromString(frames[0]).model_id == "tiny-llava"


def test_client_streams_and_unknown_methods_are_unimplemented(web_server, messages):
    _, _, _, code, message = call(web_server, "AnswerFromCodes", messages[0])
    assert code == grpc.StatusCode.UNIMPLEMENTED.value[0] and "AnswerFromCodesBundle" in message
    _, _, _, code, _ = call(web_server, "NoSuchMethod", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_limits_and_bad_frames(web_server):
    huge = pb.ProbeLinkRequest(padding=bytes(9 * 1024 * 1024)).SerializeToString()
    _, _, _, code, message = call(web_server, "ProbeLink", huge)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message
    # Just over the limit, still within the body bound: gRPC's own refusal, as natively.
    over = pb.ProbeLinkRequest(padding=bytes(8 * 1024 * 1024)).SerializeToString()
    _, _, _, code, message = call(web_server, "ProbeLink", over)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message
    _, _, _, code, message = call(web_server, "ProbeLink", b"", raw_body=b"\x00\x00\x00\x00\x09")
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "frame" in message
    _, _, _, code, message = call(web_server, "ProbeLink", b"",
                                  raw_body=grpc_web.frame(b"") * 2)
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "one request message" in message
    _, _, frames, code, _ = call(web_server, "ProbeLink",
                                 pb.ProbeLinkRequest(padding=bytes(1000)).SerializeToString())
    assert code == 0 and pb.ProbeLinkResponse.FromString(frames[0]).received_bytes == 1003


def test_web_calls_are_counted_in_the_servers_metrics(web_server, messages):
    metrics = next(re.search(r"metrics on (\S+)", line).group(1)
                   for line in web_server.process.lines if "metrics on" in line)

    def bundle_calls(code):
        text = urllib.request.urlopen(metrics, timeout=10).read().decode()
        found = re.search(r'alignedvq_requests_total\{code="%s",method="AnswerFromCodesBundle"'
                          r',mode="alignedvq"\} (\S+)' % code, text)
        return float(found.group(1)) if found else 0.0

    before = bundle_calls("OK"), bundle_calls("INVALID_ARGUMENT")
    assert call(web_server, "AnswerFromCodesBundle", bundle(messages))[3] == 0
    assert call(web_server, "AnswerFromCodesBundle", bundle([messages[0]] * 2))[3] == 3
    assert (bundle_calls("OK"), bundle_calls("INVALID_ARGUMENT")) == (before[0] + 1,
                                                                      before[1] + 1)


async def _preflight(server, origin):
    async with aiohttp.ClientSession() as session:
        async with session.options(server.url + SERVICE.lstrip("/") + "GetServerInfo", headers={
                "origin": origin, "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,authorization"}) as r:
            return r.status, r.headers


def test_cors_only_for_the_listed_origins(web_server):
    status, headers = asyncio.run(_preflight(web_server, web_server.cors_origin))
    assert status == 204 and headers["access-control-allow-origin"] == web_server.cors_origin
    assert "authorization" in headers["access-control-allow-headers"]
    assert "x-request-id" in headers["access-control-expose-headers"]
    status, headers = asyncio.run(_preflight(web_server, "http://elsewhere.example"))
    assert status == 403 and "access-control-allow-origin" not in headers


def test_the_page_and_only_its_files_are_served(web_server):
    def get(path):
        try:
            with urllib.request.urlopen(web_server.url + path, timeout=10) as r:
                return r.status, r.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            return e.code, ""

    assert get("")[0] == 200 and get("")[1].startswith("text/html")
    assert get("app/main.js")[1].endswith("javascript")
    assert get("lib/preprocess.js")[0] == 200
    assert get("edge/edge.json")[0] == 200 and get("edge/edge.onnx")[0] == 200
    assert get("edge/export.log")[0] == 404  # in the export folder, but not the graph
    assert get("lib/../../../pyproject.toml")[0] == 404
    assert get("protos/inference.proto")[0] == 200
    assert get("samples/sample0.png")[0] == 200
