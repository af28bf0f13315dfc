"""TLS, mTLS and bearer tokens on a real ``cloud-server`` over loopback.

Two server processes cover the matrix: one serving TLS with bearer tokens, one serving mTLS.
Certificates are made fresh per run (a CA, a server certificate for 127.0.0.1/localhost, a
client certificate, and an unrelated CA with its own client certificate)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import cli, edge_agent_in_process
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from alignedvq.server_process import ServerProcess
from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from cloud_server.config import ServerConfig
from cloud_server.security import SecurityConfigError, ServerSecurity, parse_tokens
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import SAMPLES_DIR
from common.wire.channels import channel
from edge_agent.client import auth_metadata

IMAGE = SAMPLES_DIR / "images" / "sample2.png"
QUESTION = "how many objects are there?"
TOKEN, TOKEN_2 = "s3cret-token-one", "rotated-token-two"


# --- certificates ---------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(cert, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, cn: str, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(root: Path) -> dict[str, Path]:
    """CA + server cert + client cert, and an unrelated CA + client cert, as PEM files."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    ca_key, ca_cert = _ca("alignedvq test CA")
    other_key, other_cert = _ca("unrelated CA")
    for name, (key, cert) in {
            "server": _leaf(ca_key, ca_cert, "localhost", server=True),
            "client": _leaf(ca_key, ca_cert, "edge-1", server=False),
            "other_client": _leaf(other_key, other_cert, "intruder", server=False)}.items():
        _write_cert(cert, root / f"{name}.crt")
        _write_key(key, root / f"{name}.key")
        files[name + "_cert"], files[name + "_key"] = root / f"{name}.crt", root / f"{name}.key"
    _write_cert(ca_cert, root / "ca.crt")
    _write_cert(other_cert, root / "other_ca.crt")
    files["ca"], files["other_ca"] = root / "ca.crt", root / "other_ca.crt"
    return files


# --- servers ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_file(pki):
    path = pki["ca"].parent / "tokens"
    path.write_text(f"# accepted bearer tokens\n\n{TOKEN}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def servers(pki, token_file):
    """A TLS server that also wants bearer tokens, and an mTLS server; started together so
    their model loads overlap."""
    with contextlib.ExitStack() as stack:
        tls = stack.enter_context(ServerProcess(
            "--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["server_key"]),
            "--auth-token-file", str(token_file), "--metrics-port", "0"))
        mtls = stack.enter_context(ServerProcess(
            "--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["server_key"]),
            "--tls-client-ca", str(pki["ca"])))
        tls.wait_ready()
        mtls.wait_ready()
        yield {"tls": tls, "mtls": mtls}
        for server in (tls, mtls):  # drain both at once; the exit stack then waits for each
            server.proc.send_signal(signal.SIGTERM)


def edge_agent(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The real ``edge-agent`` process: for what is about the process (exit code, stderr)."""
    return subprocess.run(cli("edge-agent") + ["--image", str(IMAGE), "--question", QUESTION,
                                               "--json", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def edge_in_process(*args: str):
    """``edge-agent``'s main in this process: the same TLS/token code, no subprocess start."""
    return edge_agent_in_process("--image", IMAGE, "--question", QUESTION, "--json", *args)


def image_request(stub, metadata=None) -> pb.AnswerFromImageRequest:
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30, metadata=metadata)
    return pb.AnswerFromImageRequest(image=jpeg_baseline(open_image(IMAGE), info.image_size, 90),
                                     question=QUESTION)


def answer_from_image(stub, metadata=None) -> str:
    responses = list(stub.AnswerFromImage(image_request(stub, metadata), timeout=120,
                                          metadata=metadata))
    return responses[-1].summary.answer


def call(stub, method: str, metadata):
    """One call of each kind: unary-unary, unary-stream, stream-stream. The requests are
    valid enough that only the interceptor can turn them into UNAUTHENTICATED (an empty
    AnswerFromCodes stream would otherwise be INVALID_ARGUMENT)."""
    if method == "GetServerInfo":
        return stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30, metadata=metadata)
    if method == "AnswerFromImage":
        request = pb.AnswerFromImageRequest(image=b"\xff\xd8not-a-jpeg", question=QUESTION)
        return list(stub.AnswerFromImage(request, timeout=30, metadata=metadata))
    return list(stub.AnswerFromCodes(iter([]), timeout=30, metadata=metadata))


def status_of(fn, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    return info.value


# --- TLS + bearer tokens ------------------------------------------------------------------

@pytest.mark.integration
def test_edge_agent_over_tls_with_token_answers(servers, pki, token_file):
    # AnswerFromCodes (stream-stream) through the real CLI; the server given twice as a list
    # also checks that a multi-address target verifies the certificate against its host.
    address = servers["tls"].address
    run = edge_in_process("--server", f"{address},{address}", "--tls-ca", pki["ca"],
                          "--auth-token-file", token_file, "--mode", "alignedvq")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["answer"].strip()
    assert "without TLS" not in run.stderr


@pytest.mark.integration
def test_wrong_ca_is_refused(servers, pki, token_file, capsys):
    stub = pb_grpc.InferenceServiceStub(channel(servers["tls"].address, tls_ca=pki["other_ca"]))
    error = status_of(call, stub, "GetServerInfo", auth_metadata(TOKEN))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    # The CLI fails at once with a hint, instead of waiting out --timeout for a server that
    # will never accept this CA.
    run = edge_agent("--server", servers["tls"].address, "--tls-ca", pki["other_ca"],
                     "--auth-token-file", token_file, "--mode", "image", "--timeout", "120",
                     timeout=60)
    assert run.returncode == 1
    assert "UNAVAILABLE" in run.stderr and "--tls-ca" in run.stderr
    # --no-wait (one attempt) gives the same hint; in-process, the console script's main().
    from edge_agent.cli import main as edge_main

    assert edge_main(["--image", str(IMAGE), "--question", QUESTION, "--mode", "image",
                      "--server", servers["tls"].address, "--tls-ca", str(pki["other_ca"]),
                      "--no-wait"]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "TLS handshake" in err and "--tls-ca" in err


@pytest.mark.integration
def test_plaintext_client_is_refused_by_tls_server(servers):
    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(servers["tls"].address))
    error = status_of(call, stub, "GetServerInfo", auth_metadata(TOKEN))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.integration
@pytest.mark.parametrize("method", ["GetServerInfo", "AnswerFromImage", "AnswerFromCodes"])
@pytest.mark.parametrize("metadata, expected", [
    (None, "requires a bearer token"),
    (auth_metadata("not-the-token"), "not one this server accepts"),
    ((("authorization", "Basic not-the-token"),), "not 'Bearer <token>'"),
], ids=["missing", "wrong", "wrong-scheme"])
def test_bad_token_is_unauthenticated(servers, pki, method, metadata, expected):
    stub = pb_grpc.InferenceServiceStub(channel(servers["tls"].address, tls_ca=pki["ca"]))
    error = status_of(call, stub, method, metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert expected in error.details()
    assert "not-the-token" not in error.details() and TOKEN not in error.details()


def _requests_total(server, method: str, code: str) -> float:
    url = next(re.search(r"metrics on (http://\S+)", line).group(1) for line in server.lines
               if "metrics on" in line)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    wanted = f'alignedvq_requests_total{{code="{code}",method="{method}",mode="-"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(wanted))


@pytest.mark.integration
def test_auth_refusals_are_counted_in_the_metrics(servers, pki):
    server = servers["tls"]
    stub = pb_grpc.InferenceServiceStub(channel(server.address, tls_ca=pki["ca"]))
    before = {m: _requests_total(server, m, "UNAUTHENTICATED") for m in ("GetServerInfo",
                                                                          "AnswerFromCodes")}
    status_of(call, stub, "GetServerInfo", auth_metadata("not-the-token"))
    status_of(call, stub, "AnswerFromCodes", None)
    for method, count in before.items():
        assert _requests_total(server, method, "UNAUTHENTICATED") == count + 1, method


@pytest.mark.integration
def test_health_and_reflection_need_no_token(servers, pki):
    ch = channel(servers["tls"].address, tls_ca=pki["ca"])
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", "alignedvq.v1.InferenceService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "alignedvq.v1.InferenceService" in names


def healthcheck(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """The container HEALTHCHECK's command, as a real process."""
    import os
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALIGNEDVQ_")}
    return subprocess.run([sys.executable, "-m", "cloud_server.healthcheck", *map(str, args)],
                          capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


@pytest.mark.integration
def test_healthcheck_against_tls_and_mtls_servers(servers, pki):
    tls, mtls = servers["tls"].address, servers["mtls"].address
    ok = healthcheck("--address", tls, "--tls-ca", pki["ca"])
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
    # The container's way: the server's own env says TLS, the probe's CA comes from env too.
    ok = healthcheck("--address", tls, env={"ALIGNEDVQ_TLS_CERT": str(pki["server_cert"]),
                                            "ALIGNEDVQ_HEALTHCHECK_TLS_CA": str(pki["ca"])})
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
    plain = healthcheck("--address", tls)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
    assert "--tls-ca" in plain.stderr and "Traceback" not in plain.stderr
    ok = healthcheck("--address", mtls, "--tls-ca", pki["ca"], "--tls-cert", pki["client_cert"],
                     "--tls-key", pki["client_key"])
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
    refused = healthcheck("--address", mtls, "--tls-ca", pki["ca"])
    assert refused.returncode == 1 and "--tls-cert" in refused.stderr


@pytest.mark.integration
def test_good_request_after_refusals(servers, pki):
    stub = pb_grpc.InferenceServiceStub(channel(servers["tls"].address, tls_ca=pki["ca"]))
    assert answer_from_image(stub, auth_metadata(TOKEN)).strip()


@pytest.mark.integration
def test_an_image_handle_never_resolves_for_another_token(servers, pki, token_file):
    """Handles are scoped to the caller's token: the same image sent by two callers gets two
    handles, and one caller's handle is unknown to the other (FAILED_PRECONDITION)."""
    stub = pb_grpc.InferenceServiceStub(channel(servers["tls"].address, tls_ca=pki["ca"]))
    original = token_file.read_text()
    try:
        token_file.write_text(f"{TOKEN}\n{TOKEN_2}\n")
        deadline = time.monotonic() + 10  # the server re-checks the file once a second
        while True:
            try:
                call(stub, "GetServerInfo", auth_metadata(TOKEN_2))
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the second token was not accepted in 10 s"
                time.sleep(0.1)
        def first_turn(token):  # the same image from each caller
            metadata = auth_metadata(token)
            return list(stub.AnswerFromImage(image_request(stub, metadata), timeout=120,
                                             metadata=metadata))[-1].summary

        first, other = first_turn(TOKEN), first_turn(TOKEN_2)
        assert first.image_handle and other.image_handle != first.image_handle

        def follow_up(handle, token):
            request = pb.AnswerFromImageRequest(question=QUESTION, image_handle=handle)
            return list(stub.AnswerFromImage(request, timeout=120,
                                             metadata=auth_metadata(token)))[-1].summary

        assert follow_up(first.image_handle, TOKEN).cached_tokens > 0
        for handle, token in ((first.image_handle, TOKEN_2), (other.image_handle, TOKEN)):
            error = status_of(follow_up, handle, token)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert follow_up(other.image_handle, TOKEN_2).answer  # each still has its own
    finally:
        token_file.write_text(original)


@pytest.mark.integration
def test_token_rotation_without_restart(servers, pki, token_file):
    stub = pb_grpc.InferenceServiceStub(channel(servers["tls"].address, tls_ca=pki["ca"]))

    def accepted(token: str) -> bool:
        try:
            call(stub, "GetServerInfo", auth_metadata(token))
            return True
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.details()
            return False

    def eventually(token: str, want: bool) -> None:
        deadline = time.monotonic() + 10  # the server re-checks the file once a second
        while accepted(token) != want:
            assert time.monotonic() < deadline, f"token {'not ' * want}accepted after 10 s"
            time.sleep(0.1)

    original = token_file.read_text()
    try:
        token_file.write_text(f"{TOKEN}\n# new one, rolled out next\n{TOKEN_2}\n")
        eventually(TOKEN_2, True)
        assert accepted(TOKEN)
        token_file.write_text(f"{TOKEN_2}\n")
        eventually(TOKEN, False)
        assert accepted(TOKEN_2)
        # A broken rewrite (no token at all) keeps the last good tokens instead of locking
        # every client out: once the server has re-read the file (its log says so), the last
        # good token still works.
        kept = "keeping the previous tokens"
        seen = sum(kept in line for line in servers["tls"].stderr_lines)
        token_file.write_text("# nothing here yet\n")
        deadline = time.monotonic() + 10
        while sum(kept in line for line in servers["tls"].stderr_lines) == seen:
            assert accepted(TOKEN_2)  # each call lets the server re-check the file
            assert time.monotonic() < deadline, "the broken token file was not re-read in 10 s"
            time.sleep(0.1)
        assert accepted(TOKEN_2)
    finally:
        token_file.write_text(original)
        eventually(TOKEN, True)


# --- mTLS ---------------------------------------------------------------------------------

@pytest.mark.integration
def test_mtls_edge_agent_with_client_cert_answers(servers, pki):
    # AnswerFromImage (unary-stream) through the real CLI.
    tls = {"tls_ca": pki["ca"], "tls_cert": pki["client_cert"], "tls_key": pki["client_key"]}
    run = edge_in_process("--server", servers["mtls"].address, "--mode", "image",
                          *(x for k, v in tls.items() for x in ("--" + k.replace("_", "-"), v)))
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout.strip().splitlines()[-1])["answer"]
    # Same JPEG, same greedy model: the CLI's answer is the one a direct call gets.
    stub = pb_grpc.InferenceServiceStub(channel(servers["mtls"].address, **tls))
    assert answer.strip() and answer == answer_from_image(stub)


@pytest.mark.integration
@pytest.mark.parametrize("client", [None, "other_client"], ids=["no-cert", "foreign-ca-cert"])
def test_mtls_refuses_client_without_trusted_cert(servers, pki, client):
    tls = {"tls_ca": pki["ca"]}
    if client:
        tls.update(tls_cert=pki[client + "_cert"], tls_key=pki[client + "_key"])
    stub = pb_grpc.InferenceServiceStub(channel(servers["mtls"].address, **tls))
    error = status_of(call, stub, "GetServerInfo", None)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    # ... and the server still serves a client it trusts.
    good = pb_grpc.InferenceServiceStub(channel(
        servers["mtls"].address, tls_ca=pki["ca"], tls_cert=pki["client_cert"],
        tls_key=pki["client_key"]))
    assert answer_from_image(good).strip()


# --- configuration errors -----------------------------------------------------------------

@pytest.mark.parametrize("fields, flags", [
    ({"tls_cert": "server_cert"}, ["--tls-cert", "--tls-key"]),
    ({"tls_key": "server_key"}, ["--tls-key", "--tls-cert"]),
    ({"tls_client_ca": "ca"}, ["--tls-client-ca", "--tls-cert", "--tls-key"]),
    ({"tls_cert": "server_key", "tls_key": "server_key"}, ["--tls-cert"]),  # key as cert
    ({"tls_cert": "server_cert", "tls_key": "missing"}, ["--tls-key", "cannot read"]),
])
def test_half_configured_tls_names_the_flags(pki, fields, flags):
    values = {k: str(pki.get(v, pki["ca"].parent / v)) for k, v in fields.items()}
    with pytest.raises(SecurityConfigError) as info:
        ServerSecurity.from_config(ServerConfig(**values))
    for flag in flags:
        assert flag in str(info.value)


def test_token_file_format(tmp_path):
    assert parse_tokens("# comment\n\n  one  \ntwo\n", "f") == [b"one", b"two"]
    for bad in ("# only comments\n\n", "two words\n"):
        with pytest.raises(SecurityConfigError) as info:
            parse_tokens(bad, "--auth-token-file f")
        assert "--auth-token-file f" in str(info.value) and "words" not in str(info.value)


@pytest.mark.integration
def test_half_configured_server_exits_2(pki, tmp_path):
    """The real command exits 2, naming the missing flag, before it loads or binds anything."""
    run = subprocess.run([*cli("cloud-server"), "--port", "0", "--tls-cert",
                          str(pki["server_cert"])], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--tls-key" in run.stderr and "listening" not in run.stdout


def test_bad_token_file_and_half_client_cert_exit_2(pki, tmp_path, capsys):
    # In-process, to spare two interpreter starts: serve() is what cloud-server's main() runs
    # (minus its logging setup), edge_agent.cli.main is the console script itself.
    from cloud_server.server import serve
    from edge_agent.cli import main as edge_main

    empty = tmp_path / "empty-tokens"
    empty.write_text("# no tokens yet\n")
    assert asyncio.run(serve(ServerConfig(port=0, auth_token_file=str(empty)))) == 2
    assert "--auth-token-file" in capsys.readouterr().err
    assert edge_main(["--image", str(IMAGE), "--question", "q", "--server", "127.0.0.1:1",
                      "--tls-cert", str(pki["client_cert"])]) == 2
    assert "--tls-cert and --tls-key" in capsys.readouterr().err
