"""``edge-agent``: ask the cloud server a question about an image.

``--mode alignedvq`` (default) runs the vision tower and the codec here and sends only packed
codebook indices; ``--mode image`` uploads the image as JPEG (the cloud-only baseline).

``--runtime torch`` (default) runs the edge half with PyTorch; ``--runtime onnx`` runs the graph
``alignedvq export-edge`` wrote, with ONNX Runtime, and imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import grpc

from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common._runtime.fast_exit import exit_now
from common.wire.modes import ALIGNEDVQ, EDGE_MODES, FEATURE_MODES, IMAGE_MODE
from common.imaging.policy import (DEFAULT_MAX_PIXELS, ImageRefused, check_image, checkpoint_image_size,
                           load_model_input)
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_EDGE_DIR, DEFAULT_MODEL_DIR
from common.wire.request_ids import METADATA_KEY, is_valid, new_request_id
from edge_agent.client import (IncompatibleServer, ask_with_codes, ask_with_image, auth_metadata, check_compatible, read_token, server_info)
from common.wire.channels import channel, grpc_target
from edge_agent.retry import (ConnectionRefusedByServer, Retrying, channel_ready,
                              listener_accepts)

TLS_HINT = ("edge-agent: the server refused the connection (TLS handshake): a TLS server needs "
            "--tls-ca (the CA that signed its certificate), one that requires client "
            "certificates also needs --tls-cert/--tls-key signed by its --tls-client-ca, and a "
            "plaintext server needs no --tls-* flag")

# The RPC each mode calls (for --dump-payload): features go to AnswerFromCodes, images to
# AnswerFromImage.
METHODS = {**{mode: "/alignedvq.v1.InferenceService/AnswerFromCodes" for mode in FEATURE_MODES},
           IMAGE_MODE: "/alignedvq.v1.InferenceService/AnswerFromImage"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True,
                   help="any raster image Pillow reads (JPEG, PNG, GIF, TIFF, WebP, ...); "
                        "EXIF rotation applied, alpha flattened on white, 16-bit and float "
                        "images scaled to 8 bits; refused with exit code 2 when unreadable")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images whose header claims more pixels (default %(default)s), "
                        "before decoding them")
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
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="torch: PyTorch + transformers (default); onnx: the exported graph on "
                        "ONNX Runtime, no torch needed (--mode alignedvq only)")
    p.add_argument("--onnx-dir", default=str(DEFAULT_EDGE_DIR),
                   help="--runtime onnx: the folder `alignedvq export-edge --out` wrote "
                        "(edge.onnx + edge.json)")
    p.add_argument("--threads", type=int, default=0,
                   help="--runtime onnx: ONNX Runtime intra-op threads (0 = its default)")
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
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds per call, waiting for a starting server and retries included")
    p.add_argument("--no-wait", action="store_true",
                   help="fail at once when the server is not up or says UNAVAILABLE / "
                        "RESOURCE_EXHAUSTED (default: wait for it and retry with exponential "
                        "backoff and jitter, within --timeout)")
    p.add_argument("--request-id", default=None,
                   help="id the server logs this request under and echoes back (letters, "
                        "digits, ._:/+=@-; at most 128); default: a random one")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--dump-payload", metavar="FILE",
                   help="after answering, write the request as sent, for replay or reading "
                        "by clients in other languages: a JSON object {\"method\": the gRPC "
                        "method path, \"messages_base64\": [each serialised request message, "
                        "standard base64, in send order]} (protos/README.md, 'The dump file')")
    return p


def load_onnx_edge(onnx_dir: str, threads: int = 0):
    """The ONNX edge, or None after printing why not (a missing export says how to make one)."""
    from edge_agent.edge_spec import EdgeExportMissing
    from edge_agent.onnx_edge import OnnxEdge

    try:
        return OnnxEdge(onnx_dir, threads)
    except EdgeExportMissing as e:
        print(f"edge-agent: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - ORT's load errors (InvalidProtobuf, Fail, ...)
        # derive from Exception only; any of them means this folder holds no usable graph.
        print(f"edge-agent: cannot load the ONNX edge in {onnx_dir}: {e}", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runtime == "onnx" and args.mode != ALIGNEDVQ:
        print(f"edge-agent: --runtime onnx sends codebook indices only (--mode alignedvq), "
              f"not --mode {args.mode}", file=sys.stderr)
        return 2
    onnx_edge = None
    if args.runtime == "onnx":
        # Loaded before anything goes on the wire, so a missing export fails fast.
        onnx_edge = load_onnx_edge(args.onnx_dir, args.threads)
        if onnx_edge is None:
            return 2
    # The image is checked (image mode) or made into the model's input square (feature modes)
    # before the model loads and before anything goes on the network: a bad file exits 2 at
    # once, and a large image is decoded while the process is still small.
    try:
        if args.mode == IMAGE_MODE:
            check_image(args.image, args.max_image_pixels)
            image = None
        else:
            # The ONNX edge knows its input size from its sidecar: a device needs no checkpoint.
            size = onnx_edge.spec.image_size if onnx_edge else checkpoint_image_size(args.model)
            image = load_model_input(args.image, size, args.max_image_pixels)
    except ImageRefused as e:
        print(f"edge-agent: cannot use the image: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 2
    try:
        token = read_token(args.auth_token_file) if args.auth_token_file else None
        request_id = args.request_id or new_request_id()
        if not is_valid(request_id):
            raise ValueError(f"--request-id {request_id!r}: use 1-128 letters, digits or ._:/+=@-")
        metadata = (*(auth_metadata(token) or ()), (METADATA_KEY, request_id))
        ch = channel(args.server, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                     tls_key=args.tls_key, tls_server_name=args.tls_server_name)
        stub = pb_grpc.InferenceServiceStub(ch)
        retry = Retrying(ch, grpc_target(args.server), args.timeout, wait=not args.no_wait,
                         on_wait=lambda e: print(
                             f"edge-agent: waiting for {args.server} ({e.code().name}: "
                             f"{e.details()}); retrying for up to --timeout {args.timeout:g} s",
                             file=sys.stderr, flush=True))
    except (OSError, ValueError) as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 2
    if token and not (args.tls_ca or args.tls_cert):
        print("edge-agent: warning: sending the bearer token without TLS; anyone on the path "
              "can read it (add --tls-ca)", file=sys.stderr)
    try:
        info = server_info(stub, metadata=metadata, retry=retry)
        stream = (lambda t: None) if args.json else (lambda t: print(t, end="", flush=True))
        if args.mode == IMAGE_MODE:
            image = load_model_input(args.image, info.image_size, args.max_image_pixels)
            result = ask_with_image(stub, image, args.question, info.image_size,
                                    args.jpeg_quality, args.max_new_tokens, stream,
                                    metadata=metadata, retry=retry)
        elif onnx_edge is not None:
            check_compatible(info, onnx_edge)
            result = ask_with_codes(stub, onnx_edge, image, args.question, args.max_new_tokens,
                                    stream, metadata=metadata, retry=retry)
        else:
            import torch

            from common.split.checkpoint import default_device
            from edge_agent.torch_edge import EdgeHalf

            device = default_device() if args.device == "auto" else args.device
            edge = EdgeHalf(args.model, args.codec if args.mode == ALIGNEDVQ else None,
                            args.mode, args.split_layer, device,
                            getattr(torch, args.dtype))
            check_compatible(info, edge)
            result = ask_with_codes(stub, edge, image, args.question, args.max_new_tokens,
                                    stream, metadata=metadata, retry=retry)
    except ImageRefused as e:
        print(f"edge-agent: cannot use the image: {e}", file=sys.stderr)
        return 2
    except IncompatibleServer as e:
        print(f"edge-agent: incompatible server: {e}", file=sys.stderr)
        return 3
    except ConnectionRefusedByServer as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        print(TLS_HINT, file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"edge-agent: {e.code().name}: {e.details()}", file=sys.stderr)
        if args.no_wait:
            # One attempt, so no waiting told the cases apart: ask the same question here.
            if e.code() == grpc.StatusCode.UNAVAILABLE and not channel_ready(ch, 0.05) and \
                    listener_accepts(grpc_target(args.server)):
                print(TLS_HINT, file=sys.stderr)
        elif e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                          grpc.StatusCode.DEADLINE_EXCEEDED):
            print(f"edge-agent: no answer from {args.server} within --timeout "
                  f"{args.timeout:g} s", file=sys.stderr)
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


def console_main() -> None:
    """The ``edge-agent`` command: ends as soon as the answer is out (common._runtime.fast_exit)."""
    exit_now(main())


if __name__ == "__main__":
    console_main()
