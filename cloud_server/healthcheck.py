"""``python -m cloud_server.healthcheck``: exit 0 when the local cloud-server reports SERVING on
the standard gRPC health service, 1 otherwise.

The container image's HEALTHCHECK runs this (grpc_health_probe is a separate Go binary; this
needs nothing the image does not already have). Kubernetes' native ``grpc:`` probes ask the same
health service but speak plaintext only; against a TLS server, run this as an ``exec`` probe
(deploy/README.md).

TLS: on when any ``--tls-*`` flag is given or the server's own ``ALIGNEDVQ_TLS_CERT`` is set (the
container's environment, which the HEALTHCHECK shares). The server is verified against
``--tls-ca`` (default: system roots) under ``--tls-server-name`` (a name in its certificate); an
mTLS server also needs ``--tls-cert``/``--tls-key``. Each flag defaults to
``ALIGNEDVQ_HEALTHCHECK_<FLAG>`` (e.g. ``ALIGNEDVQ_HEALTHCHECK_TLS_CA``).
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "alignedvq.v1.InferenceService"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cloud_server.healthcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # The server's own port setting (cloud_server/config.py), so an image run with
    # ALIGNEDVQ_PORT=... checks that port. Not imported from there: config pulls in torch, and
    # this runs every few seconds.
    port = os.environ.get("ALIGNEDVQ_PORT", "50051")
    p.add_argument("--address", default=f"127.0.0.1:{port}",
                   help="HOST:PORT of the server (default 127.0.0.1:$ALIGNEDVQ_PORT or 50051)")
    p.add_argument("--service", default=SERVICE,
                   help="health service name to ask about; '' = the server as a whole")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    for flag, text in (("tls-ca", "PEM CA that signed the server's certificate (turns TLS on)"),
                       ("tls-cert", "PEM client certificate, for an mTLS server"),
                       ("tls-key", "PEM private key of --tls-cert"),
                       ("tls-server-name", "name to check the server's certificate against "
                                           "(default: the host in --address)")):
        env = "ALIGNEDVQ_HEALTHCHECK_" + flag.upper().replace("-", "_")
        p.add_argument("--" + flag, default=os.environ.get(env) or None,
                       help=f"{text}; default ${env}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tls = bool(args.tls_ca or args.tls_cert or args.tls_server_name
               or os.environ.get("ALIGNEDVQ_TLS_CERT"))
    try:
        # The channel the edge opens (the same TLS options and name override); it imports no model
        # code (no torch), and this runs every few seconds.
        from common.wire.channels import channel

        with channel(args.address, tls=tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                     tls_key=args.tls_key, tls_server_name=args.tls_server_name) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout).status
    except (OSError, ValueError) as e:
        print(f"healthcheck: {e}", file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        print(f"healthcheck: {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            print(f"healthcheck: ({'TLS' if tls else 'plaintext'} probe) a TLS server needs "
                  f"--tls-ca (and --tls-server-name when its certificate does not name the "
                  f"address); an mTLS one also --tls-cert/--tls-key", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"healthcheck: {args.address} {args.service or '(server)'}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
