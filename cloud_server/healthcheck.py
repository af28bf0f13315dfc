"""``python -m cloud_server.healthcheck``: exit 0 when the local cloud-server reports SERVING on
the standard gRPC health service, 1 otherwise.

The container image's HEALTHCHECK runs this (grpc_health_probe is a separate Go binary; this
needs nothing the image does not already have). Kubernetes does not need it: its native
``grpc:`` probes ask the same health service (deploy/k8s/deployment.yaml).
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "alignedvq.v1.InferenceService"


def main(argv: list[str] | None = None) -> int:
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
    args = p.parse_args(argv)
    try:
        with grpc.insecure_channel(args.address) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout).status
    except grpc.RpcError as e:
        print(f"healthcheck: {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"healthcheck: {args.address} {args.service or '(server)'}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
