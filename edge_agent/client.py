"""The edge side of one request: check compatibility, encode, stream, collect the answer."""

from __future__ import annotations

import io
import ipaddress
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from PIL import Image

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.features import fingerprint_bytes


class IncompatibleServer(RuntimeError):
    pass


@dataclass
class Result:
    answer: str = ""
    mode: str = ""
    payload_bytes: int = 0
    edge_ms: float = 0.0
    network_ms: float = 0.0
    cloud_ms: float = 0.0
    total_ms: float = 0.0
    tokens_generated: int = 0
    server_payload_bytes: int = 0
    model_id: str = ""
    request_id: str = ""
    batch_size: int = 0
    messages: list[bytes] = field(default_factory=list, repr=False)

    def as_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "messages"}
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


def check_compatible(info: pb.GetServerInfoResponse, edge) -> None:
    """Refuse locally, before encoding anything, when the server could not decode our payload."""
    if info.vision_fingerprint != fingerprint_bytes(edge.vision.fingerprint):
        raise IncompatibleServer(
            f"server runs vision weights {info.vision_fingerprint.hex()} (model {info.model_id}, "
            f"split layer {info.split_layer}); this edge has {edge.vision.fingerprint} "
            f"(split layer {edge.split.split_layer})")
    if edge.codec is not None and info.codec_fingerprint != fingerprint_bytes(
            edge.codec_fingerprint):
        raise IncompatibleServer(f"server decodes codec {info.codec_fingerprint.hex() or '(none)'}"
                                 f"; this edge encodes with {edge.codec_fingerprint}")


def jpeg_upload(image: Image.Image, size: int, quality: int) -> bytes:
    """The paper's baseline: the image at the model's input size, JPEG-encoded."""
    scale = size / min(image.size)
    resized = image.resize((max(size, round(image.width * scale)),
                            max(size, round(image.height * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    resized.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _finish(result: Result, responses, started: float, on_delta) -> Result:
    for response in responses:
        if response.WhichOneof("part") == "text_delta":
            on_delta(response.text_delta)
        else:
            s = response.summary
            result.answer = s.answer
            result.cloud_ms = s.decode_ms + s.queue_ms + s.generate_ms
            result.tokens_generated = s.tokens_generated
            result.server_payload_bytes = s.payload_bytes
            result.model_id = s.model_id
            result.request_id = s.request_id
            result.batch_size = s.batch_size
    result.total_ms = (time.perf_counter() - started) * 1000
    result.network_ms = max(0.0, result.total_ms - result.edge_ms - result.cloud_ms)
    return result


def ask_with_codes(stub: pb_grpc.InferenceServiceStub, edge, image: Image.Image, question: str,
                   max_new_tokens: int = 0, on_delta=lambda text: None,
                   timeout: float | None = None, metadata=None) -> Result:
    started = time.perf_counter()
    chunks = edge.chunks([image])[0]
    messages = edge.messages(chunks, question, max_new_tokens)
    result = Result(mode=edge.mode)
    result.messages = [m.SerializeToString() for m in messages]
    result.payload_bytes = sum(map(len, result.messages))
    result.edge_ms = (time.perf_counter() - started) * 1000
    responses = stub.AnswerFromCodes(iter(messages), timeout=timeout, metadata=metadata)
    return _finish(result, responses, started, on_delta)


def ask_with_image(stub: pb_grpc.InferenceServiceStub, image: Image.Image, question: str,
                   size: int, quality: int = 90, max_new_tokens: int = 0,
                   on_delta=lambda text: None, timeout: float | None = None,
                   metadata=None) -> Result:
    started = time.perf_counter()
    request = pb.AnswerFromImageRequest(
        image=jpeg_upload(image, size, quality), question=question,
        generation=pb.GenerationParams(max_new_tokens=max_new_tokens) if max_new_tokens else None)
    result = Result(mode="image")
    result.messages = [request.SerializeToString()]
    result.payload_bytes = len(result.messages[0])
    result.edge_ms = (time.perf_counter() - started) * 1000
    responses = stub.AnswerFromImage(request, timeout=timeout, metadata=metadata)
    return _finish(result, responses, started, on_delta)


ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def _split_host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} in the server list is not HOST:PORT")
    return host.strip("[]"), port


def grpc_target(server: str) -> str:
    """``--server`` as a gRPC target.

    One address or any gRPC target (``dns:///name:port``, ``ipv4:...``, ``unix:...``) passes
    through; a comma-separated list of IP:PORT becomes an ``ipv4:``/``ipv6:`` multi-address
    target, which round_robin spreads calls over. (Names in a list are refused: the
    ``ipv4:``/``ipv6:`` schemes take literal addresses; use ``dns:///name:port`` for a name
    that resolves to several replicas.)"""
    server = server.strip()
    if "," not in server or server.startswith(("ipv4:", "ipv6:")) or "://" in server:
        return server
    addresses = [a.strip() for a in server.split(",") if a.strip()]
    families = set()
    for address in addresses:
        host, _ = _split_host_port(address)
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(f"{host!r} in the server list is not an IP address; list IP:PORT "
                             f"pairs, or give one dns:///NAME:PORT that resolves to all "
                             f"replicas") from None
    if len(families) > 1:
        raise ValueError("the server list mixes IPv4 and IPv6 addresses; gRPC needs one family "
                         "per target")
    if families == {6}:
        bracketed = []
        for address in addresses:
            host, port = _split_host_port(address)
            bracketed.append(f"[{host}]:{port}")
        return "ipv6:" + ",".join(bracketed)
    return "ipv4:" + ",".join(addresses)


def read_token(path: str | Path) -> str:
    """The first token of a token file (same format as the server's ``--auth-token-file``:
    one per line, blank lines and ``#`` comments ignored)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ValueError(f"{path} holds no token (one per line; '#' starts a comment)")


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """Call metadata carrying ``token`` as a bearer token; None when there is none."""
    return (("authorization", f"Bearer {token}"),) if token else None


def server_info(stub: pb_grpc.InferenceServiceStub, timeout: float | None = None,
                metadata=None) -> pb.GetServerInfoResponse:
    """GetServerInfo, waiting (up to ``timeout``) for a server that is not up yet, but failing
    at once on anything else, such as a TLS handshake the server or this edge refused, which
    waiting cannot fix (wait_for_ready alone hides that behind a DEADLINE_EXCEEDED after the
    whole timeout)."""
    try:
        return stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=timeout, metadata=metadata)
    except grpc.RpcError as e:
        details = (e.details() or "").lower()
        # gRPC offers no structured reason; "connection refused" / "failed to connect" / a DNS
        # failure mean nothing listens yet, "Socket closed" or a handshake error mean a
        # listener refused our TLS (or lack of it).
        not_up = any(s in details for s in ("connection refused", "failed to connect", "dns"))
        if e.code() != grpc.StatusCode.UNAVAILABLE or not not_up:
            raise
    return stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=timeout, metadata=metadata,
                              wait_for_ready=True)


def _tls_name(target: str) -> str | None:
    """The name a multi-address target's certificates are checked against: its first host
    (a replica set shares one certificate name). gRPC would otherwise check the whole
    comma-joined list, which no certificate names."""
    if not target.startswith(("ipv4:", "ipv6:")):
        return None
    first = target.split(":", 1)[1].split(",")[0]
    return _split_host_port(first)[0]


def channel(target: str, max_message_bytes: int = 8 * 1024 * 1024, *,
            tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
            tls_key: str | Path | None = None,
            tls_server_name: str | None = None) -> grpc.Channel:
    """A channel to ``target`` (anything :func:`grpc_target` takes) with round_robin load
    balancing, so consecutive calls spread over every address the target resolves to.

    TLS is on when a ``tls_ca`` or ``tls_cert`` file is given: ``tls_ca`` verifies the
    server (system roots when absent); ``tls_cert``/``tls_key`` present a client certificate
    (mTLS). ``tls_server_name`` overrides the name the server certificate is checked against."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key go together (the client certificate and its "
                         "private key)")
    target = grpc_target(target)
    options = [("grpc.max_send_message_length", max_message_bytes),
               ("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.service_config", ROUND_ROBIN)]
    if not (tls_ca or tls_cert):
        return grpc.insecure_channel(target, options=options)
    name = tls_server_name or _tls_name(target)
    if name:
        options.append(("grpc.ssl_target_name_override", name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
        private_key=Path(tls_key).read_bytes() if tls_key else None,
        certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None)
    return grpc.secure_channel(target, credentials, options=options)
