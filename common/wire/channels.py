"""gRPC channels to a cloud server, as the edge and the server's health check open them: the
``--server`` forms (one address, an IP:PORT replica list, any gRPC target) with round_robin load
balancing, TLS and mTLS, and reconnect backoff short enough to notice a starting server.
Torch-free."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import grpc

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


def _tls_name(target: str) -> str | None:
    """The name a multi-address target's certificates are checked against: its first host
    (a replica set shares one certificate name). gRPC would otherwise check the whole
    comma-joined list, which no certificate names."""
    if not target.startswith(("ipv4:", "ipv6:")):
        return None
    first = target.split(":", 1)[1].split(",")[0]
    return _split_host_port(first)[0]


def channel(target: str, max_message_bytes: int = 8 * 1024 * 1024, *, tls: bool = False,
            tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
            tls_key: str | Path | None = None,
            tls_server_name: str | None = None) -> grpc.Channel:
    """A channel to ``target`` (anything :func:`grpc_target` takes) with round_robin load
    balancing, so consecutive calls spread over every address the target resolves to.

    TLS is on when ``tls`` is set (the health check against a TLS server, which may know no
    CA of its own) or a ``tls_ca`` or ``tls_cert`` file is given: ``tls_ca`` verifies the
    server (system roots when absent); ``tls_cert``/``tls_key`` present a client certificate
    (mTLS). ``tls_server_name`` overrides the name the server certificate is checked against."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key go together (the client certificate and its "
                         "private key)")
    target = grpc_target(target)
    options = [("grpc.max_send_message_length", max_message_bytes),
               ("grpc.max_receive_message_length", max_message_bytes),
               # gRPC's reconnect backoff grows to 120 s by default; a client waiting for a
               # server that is starting should notice it within a second or two.
               ("grpc.initial_reconnect_backoff_ms", 200),
               ("grpc.min_reconnect_backoff_ms", 200),
               ("grpc.max_reconnect_backoff_ms", 2000),
               ("grpc.service_config", ROUND_ROBIN)]
    if not (tls or tls_ca or tls_cert):
        return grpc.insecure_channel(target, options=options)
    name = tls_server_name or _tls_name(target)
    if name:
        options.append(("grpc.ssl_target_name_override", name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
        private_key=Path(tls_key).read_bytes() if tls_key else None,
        certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None)
    return grpc.secure_channel(target, credentials, options=options)
