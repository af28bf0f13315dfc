"""``edge-agent``: ask the cloud server a question about an image.

``--mode alignedvq`` (default) runs the vision tower and the codec here and sends only packed
codebook indices; ``--mode image`` uploads the image as JPEG (the cloud-only baseline).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import grpc

from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.features import EDGE_MODES, FEATURE_MODES, IMAGE_MODE
from common.llava_io import default_device, open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR
from common.request_ids import METADATA_KEY, is_valid, new_request_id
from edge_agent.client import (IncompatibleServer, ask_with_codes, ask_with_image, auth_metadata,
                               channel, check_compatible, read_token, server_info)

# The RPC each mode calls (for --dump-payload): features go to AnswerFromCodes, images to
# AnswerFromImage.
METHODS = {**{mode: "/alignedvq.v1.InferenceService/AnswerFromCodes" for mode in FEATURE_MODES},
           IMAGE_MODE: "/alignedvq.v1.InferenceService/AnswerFromImage"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, help="any image PIL opens (JPEG, PNG, ...)")
    p.add_argument("--question", required=True, help="the question, in the model's language")
    p.add_argument("--server", default="127.0.0.1:50051",
                   help="cloud server HOST:PORT; a comma-separated list of IP:PORT replicas, or "
                        "any gRPC target (dns:///NAME:PORT); calls are spread round-robin")
    p.add_argument("--tls-ca", metavar="FILE",
                   help="PEM CA that signed the server's certificate; turns TLS on")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="PEM client certificate, for servers that require one (mTLS); "
                        "turns TLS on (system CAs unless --tls-ca)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", metavar="NAME",
                   help="name to check the server's certificate against (default: the host "
                        "in --server)")
    p.add_argument("--auth-token-file", metavar="FILE",
                   help="send the file's first token as 'authorization: Bearer <token>'")
    p.add_argument("--mode", choices=EDGE_MODES, default=EDGE_MODES[0],
                   help="alignedvq: send codebook indices (default); image: upload a JPEG; "
                        "fp16/int8: send raw split features (baselines)")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="local checkpoint; the edge reads only its vision weights")
    p.add_argument("--codec", default=str(DEFAULT_CODEC_DIR), help="AlignedVQ codec folder")
    p.add_argument("--split-layer", type=int, help="must match the server's (GetServerInfo)")
    p.add_argument("--device", default="auto",
                   help="cpu or cuda[:N] for the vision tower; auto = cuda when available")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--jpeg-quality", type=int, default=90,
                   help="--mode image: JPEG quality (90 is the paper's baseline)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="0 = the server's default")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--request-id", default=None,
                   help="id the server logs this request under and echoes back (letters, "
                        "digits, ._:/+=@-; at most 128); default: a random one")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--dump-payload", metavar="FILE",
                   help="write the serialised request messages (JSON, base64) for replay by "
                        "clients in other languages")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        image = open_image(args.image)
    except (OSError, ValueError) as e:
        print(f"edge-agent: cannot open image {args.image}: {e}", file=sys.stderr)
        return 2
    try:
        metadata = auth_metadata(read_token(args.auth_token_file)
                                 if args.auth_token_file else None)
        request_id = args.request_id or new_request_id()
        if not is_valid(request_id):
            raise ValueError(f"--request-id {request_id!r}: use 1-128 letters, digits or ._:/+=@-")
        metadata = (*(metadata or ()), (METADATA_KEY, request_id))
        stub = pb_grpc.InferenceServiceStub(channel(
            args.server, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tls_server_name=args.tls_server_name))
    except (OSError, ValueError) as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 2
    if metadata and not (args.tls_ca or args.tls_cert):
        print("edge-agent: warning: sending the bearer token without TLS; anyone on the path "
              "can read it (add --tls-ca)", file=sys.stderr)
    try:
        info = server_info(stub, args.timeout, metadata)
        stream = (lambda t: None) if args.json else (lambda t: print(t, end="", flush=True))
        if args.mode == "image":
            result = ask_with_image(stub, image, args.question, info.image_size,
                                    args.jpeg_quality, args.max_new_tokens, stream, args.timeout,
                                    metadata=metadata)
        else:
            import torch

            from common.pipeline import EdgeHalf

            device = default_device() if args.device == "auto" else args.device
            edge = EdgeHalf(args.model, args.codec if args.mode == "alignedvq" else None,
                            args.mode, args.split_layer, device,
                            getattr(torch, args.dtype))
            check_compatible(info, edge)
            result = ask_with_codes(stub, edge, image, args.question, args.max_new_tokens,
                                    stream, args.timeout, metadata=metadata)
    except IncompatibleServer as e:
        print(f"edge-agent: incompatible server: {e}", file=sys.stderr)
        return 3
    except grpc.RpcError as e:
        print(f"edge-agent: {e.code().name}: {e.details()}", file=sys.stderr)
        details = (e.details() or "").lower()
        if "handshake" in details or "socket closed" in details:
            print("edge-agent: the connection was refused during the TLS handshake: a TLS server "
                  "needs --tls-ca (the CA that signed its certificate), and one that requires "
                  "client certificates also needs --tls-cert/--tls-key signed by its "
                  "--tls-client-ca", file=sys.stderr)
        return 1
    if args.dump_payload:
        Path(args.dump_payload).write_text(json.dumps({
            "method": METHODS[args.mode],
            "messages_base64": [base64.b64encode(m).decode() for m in result.messages]}))
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        print(f"\n[{result.mode}: {result.payload_bytes} B sent, edge {result.edge_ms:.0f} ms, "
              f"network {result.network_ms:.0f} ms, cloud {result.cloud_ms:.0f} ms, "
              f"total {result.total_ms:.0f} ms]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
