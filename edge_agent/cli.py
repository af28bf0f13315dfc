"""``edge-agent``: ask the cloud server a question about an image.

``--mode auto`` (default) takes, per request, whichever path is predicted to answer first: the
upload, or codes at any split point the server serves that this edge has a codec for
(edge_agent/auto.py); ``--mode alignedvq`` always runs the vision blocks before the cut and the
codec here and sends only packed codebook indices; ``--mode image`` always uploads the image as
JPEG (the cloud-only baseline). ``--split-layer`` without ``--mode`` means ``alignedvq`` at that
cut.

``--runtime torch`` (default) runs the edge half with PyTorch; ``--runtime onnx`` runs the graph
``alignedvq export-edge`` wrote, with ONNX Runtime, and imports neither torch nor transformers.

Round trips: one question in a feature mode is ONE RPC, ``AnswerFromCodes``. The server checks
the request's vision and codec fingerprints itself and refuses a mismatch with
FAILED_PRECONDITION, which this command reports as "incompatible server" (exit code 3), as the
local check does; ``--check-server`` asks ``GetServerInfo`` first and refuses locally, before
encoding anything (two RPCs). ``--mode image`` always asks ``GetServerInfo`` first (two RPCs):
the JPEG is the exact square the server's model sees, and an image-mode edge holds no model to
read that size from.

``--chat``: a conversation about the image: questions from standard input, one per line, each
answered in turn; the image is sent once, later questions name it by the handle the server
returned (edge_agent/chat.py). Sampling flags (``--temperature``, ``--top-p``, ...) apply to
every mode.

Exit codes: 0 answered; 1 the call failed (gRPC status, with a hint where one helps); 2 bad
flags or files, or an image it refuses; 3 incompatible server.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc

from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common._runtime.fast_exit import exit_now
from common.imaging.policy import (
    DEFAULT_MAX_PIXELS,
    ImageRefused,
    check_image,
    checkpoint_image_size,
    load_model_input,
)
from common.paths import (
    DEFAULT_CODEC_DIR,
    DEFAULT_EDGE_DIR,
    DEFAULT_MODEL_DIR,
    SHIPPED_CODEC_DIRS,
    SHIPPED_EDGE_DIRS,
)
from common.wire.channels import channel, grpc_target
from common.wire.modes import ALIGNEDVQ, EDGE_MODES, FEATURE_MODES, IMAGE_MODE
from common.wire.request_ids import METADATA_KEY, is_valid, new_request_id
from edge_agent.auto import AutoAsker, AutoCache, EdgeCodec, default_cache_path
from edge_agent.chat import Chat
from edge_agent.client import (
    IncompatibleServer,
    Result,
    ask_with_codes,
    ask_with_image,
    auth_metadata,
    check_compatible,
    read_token,
    server_info,
)
from edge_agent.generation import add_generation_flags, generation_params
from edge_agent.retry import ConnectionRefusedByServer, Retrying, channel_ready, listener_accepts

TLS_HINT = ("edge-agent: the server refused the connection (TLS handshake): a TLS server needs "
            "--tls-ca (the CA that signed its certificate), one that requires client "
            "certificates also needs --tls-cert/--tls-key signed by its --tls-client-ca, and a "
            "plaintext server needs no --tls-* flag")

# The RPC each mode calls (for --dump-payload): features go to AnswerFromCodes, images to
# AnswerFromImage.
METHODS = {**{mode: "/alignedvq.v1.InferenceService/AnswerFromCodes" for mode in FEATURE_MODES},
           IMAGE_MODE: "/alignedvq.v1.InferenceService/AnswerFromImage"}
AUTO = "auto"
MODES = (*EDGE_MODES, AUTO)


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
    p.add_argument("--question", help="the question, in the model's language (required, "
                                      "except with --chat: its first question)")
    p.add_argument("--chat", action="store_true",
                   help="a conversation about the image: questions read from standard input, "
                        "one per line, after --question if given; the image is sent once, "
                        "follow-ups send the server's image handle and the earlier turns "
                        "(--json: one object per answer)")
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
    p.add_argument("--mode", choices=MODES, default=None,
                   help="auto (default; alignedvq when --split-layer is given): per request, "
                        "the upload or codes at any split point served, whichever is predicted "
                        "to answer first (learns this edge's compute, the link and the "
                        "server's times; --auto-cache); alignedvq: send codebook indices; "
                        "image: upload a JPEG; fp16/int8: send raw split features (baselines)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="torch: PyTorch + transformers (default); onnx: the exported graph on "
                        "ONNX Runtime, no torch needed (--mode alignedvq or auto)")
    p.add_argument("--onnx-dir", action="append",
                   help="--runtime onnx: a folder `alignedvq export-edge --out` wrote "
                        "(edge.onnx + edge.json); repeat for --mode auto, one per split point "
                        f"(default: {DEFAULT_EDGE_DIR.name}; auto: those of "
                        f"{', '.join(d.name for d in SHIPPED_EDGE_DIRS)} exported)")
    p.add_argument("--threads", type=int, default=0,
                   help="--runtime onnx: ONNX Runtime intra-op threads (0 = its default)")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="local checkpoint; the edge reads only its vision weights")
    p.add_argument("--codec", action="append",
                   help="AlignedVQ codec folder; the edge cuts where it was trained. Repeat for "
                        f"--mode auto, one per split point (default: {DEFAULT_CODEC_DIR.name}; "
                        f"auto: {', '.join(d.name for d in SHIPPED_CODEC_DIRS)})")
    p.add_argument("--auto-cache", metavar="FILE",
                   help="--mode auto: where it keeps what it measured (edge compute per "
                        "encoder; per server its split points, link and times); default "
                        "$XDG_CACHE_HOME/alignedvq/edge-auto.json (~/.cache when unset); "
                        "'none' keeps nothing (every request probes and profiles)")
    p.add_argument("--split-layer", type=int,
                   help="where to cut; default: where --codec was trained (its codec.json), "
                        "which a different value is refused against (fp16/int8: default the "
                        "model's feature layer)")
    p.add_argument("--check-server", action="store_true",
                   help="feature modes: ask GetServerInfo first and refuse an incompatible "
                        "server before encoding (two RPCs; default: one, AnswerFromCodes, whose "
                        "FAILED_PRECONDITION says the same). --mode image always asks it, for "
                        "the server's input size")
    p.add_argument("--device", default="auto",
                   help="cpu or cuda[:N] for the vision tower; auto = cuda when available")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--jpeg-quality", type=int, default=90,
                   help="--mode image: JPEG quality (90 is the paper's baseline)")
    add_generation_flags(p)
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


class BadInput(Exception):
    """A flag or file this command cannot use (exit code 2)."""


@dataclass
class Session:
    """What one question needs, built before anything goes on the wire."""

    args: argparse.Namespace
    image: object            # the model's input square (feature modes) or None (image mode)
    edge: object             # the ONNX edge; None for image mode, and for --runtime torch
                             # until ask() loads it (after --check-server's answer)
    channel: grpc.Channel
    stub: pb_grpc.InferenceServiceStub
    retry: Retrying
    metadata: tuple
    codecs: list[EdgeCodec] = field(default_factory=list)  # --mode auto's encoders
    generation: object = None  # the request's GenerationParams, None when no flag sets one
    asker: AutoAsker | None = None  # --mode auto's, made by the first question


def _rpc_hint(error: grpc.RpcError, session: Session | None) -> str | None:
    if session is None:
        return None
    args = session.args
    if args.no_wait:
        # One attempt, so no waiting told the cases apart: ask the same question here.
        if error.code() == grpc.StatusCode.UNAVAILABLE and not channel_ready(
                session.channel, 0.05) and listener_accepts(grpc_target(args.server)):
            return TLS_HINT
    elif error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                          grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"edge-agent: no answer from {args.server} within --timeout {args.timeout:g} s"
    return None


@dataclass(frozen=True)
class Exit:
    code: int
    message: str  # str.format fields: error, and for gRPC errors status and details
    hint: Callable[[Exception, Session | None], str | None] = lambda error, session: None


# The one place an error becomes an exit code and a message; the first matching row wins.
# Anything not here is a bug and ends with its traceback.
EXITS: tuple[tuple[type[Exception], Exit], ...] = (
    (ImageRefused, Exit(2, "edge-agent: cannot use the image: {error}")),
    (BadInput, Exit(2, "edge-agent: {error}")),
    (IncompatibleServer, Exit(3, "edge-agent: incompatible server: {error}")),
    (ConnectionRefusedByServer, Exit(1, "edge-agent: {error}", lambda error, session: TLS_HINT)),
    (grpc.RpcError, Exit(1, "edge-agent: {status}: {details}", _rpc_hint)),
)


def exit_for(error: Exception, session: Session | None) -> int | None:
    """Prints what ``error`` means and returns its exit code; None for an error not in EXITS."""
    for kind, exit in EXITS:
        if isinstance(error, kind):
            fields = {"error": error}
            if isinstance(error, grpc.RpcError):
                fields.update(status=error.code().name, details=error.details())
            print(exit.message.format(**fields), file=sys.stderr)
            hint = exit.hint(error, session)
            if hint:
                print(hint, file=sys.stderr)
            return exit.code
    return None


# --- parse -----------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.mode is None:  # a cut asked for is a fixed path; otherwise the fastest one
        args.mode = ALIGNEDVQ if args.split_layer is not None else AUTO
    if args.question is None and not args.chat:
        raise BadInput("--question is required (or --chat, which reads questions from "
                       "standard input)")
    if args.chat and args.dump_payload:
        raise BadInput("--dump-payload writes one request; leave it out with --chat")
    if args.runtime == "onnx" and args.mode not in (ALIGNEDVQ, AUTO):
        raise BadInput(f"--runtime onnx sends codebook indices only "
                       f"(--mode alignedvq), not --mode {args.mode}")
    auto = args.mode == AUTO
    args.codec = args.codec or [str(d) for d in (SHIPPED_CODEC_DIRS if auto
                                                 else [DEFAULT_CODEC_DIR])]
    # auto: the shipped split points this edge has exported (none exported: the default's, so
    # the error says how to export it).
    exported = [str(d) for d in SHIPPED_EDGE_DIRS if (d / "edge.json").is_file()]
    args.onnx_dir = args.onnx_dir or (exported if auto and exported else [str(DEFAULT_EDGE_DIR)])
    if not auto:
        for flag, given in (("--codec", args.codec), ("--onnx-dir", args.onnx_dir)):
            if len(given) > 1:
                raise BadInput(f"{flag} was given {len(given)} times; only --mode auto chooses "
                               f"among several split points")
        args.codec, args.onnx_dir = args.codec[0], args.onnx_dir[0]
    elif args.split_layer is not None:
        raise BadInput("--mode auto cuts where each codec was trained; leave --split-layer out")
    return args


# --- build -----------------------------------------------------------------------------------

def load_onnx_edge(onnx_dir: str, threads: int = 0):
    """The ONNX edge; BadInput saying why not (a missing export says how to make one)."""
    from edge_agent.edge_spec import EdgeExportMissing
    from edge_agent.onnx_edge import OnnxEdge

    try:
        edge = OnnxEdge(onnx_dir, threads)
    except EdgeExportMissing as e:
        raise BadInput(str(e)) from e
    except Exception as e:  # noqa: BLE001 - ORT's load errors (InvalidProtobuf, Fail, ...)
        # derive from Exception only; any of them means this folder holds no usable graph.
        raise BadInput(f"cannot load the ONNX edge in {onnx_dir}: {e}") from e
    if edge.spec.below_threshold:
        a = edge.spec.quantization["agreement"]
        print(f"edge-agent: warning: {onnx_dir} holds an int8 graph written with "
              f"--allow-below-threshold: its indices agree with the float32 edge on only "
              f"{a['token_agreement']:.2%} of tokens (threshold {a['threshold']:.0%})",
              file=sys.stderr)
    return edge


def load_torch_edge(args: argparse.Namespace, codec: str | None = None):
    """The torch edge for ``args.mode`` (``--mode auto``: the codes edge of ``codec``)."""
    import torch

    from common.codec.aligned_vq import CodecMismatchError
    from common.split.checkpoint import default_device
    from common.split.point import SplitError
    from edge_agent.torch_edge import EdgeHalf

    device = default_device() if args.device == "auto" else args.device
    mode = ALIGNEDVQ if codec else args.mode
    try:
        return EdgeHalf(args.model, (codec or args.codec) if mode == ALIGNEDVQ else None, mode,
                        args.split_layer, device, getattr(torch, args.dtype))
    except (CodecMismatchError, SplitError) as e:  # a --split-layer or --codec that cannot be
        raise BadInput(str(e)) from e


def auto_codecs(args: argparse.Namespace) -> list[EdgeCodec]:
    """``--mode auto``'s encoders, one per split point, known from their files (codec.json or
    edge.json); each loads when first used."""
    from edge_agent.edge_spec import EdgeExportMissing, EdgeSpec

    codecs = []
    if args.runtime == "onnx":
        for folder in args.onnx_dir:
            try:
                spec = EdgeSpec.load(Path(folder))
            except EdgeExportMissing as e:
                raise BadInput(str(e)) from e
            codecs.append(EdgeCodec(
                spec.split_layer, spec.vision_fingerprint, spec.codec_fingerprint, spec.tokens,
                spec.bits, spec.stages, f"onnx|threads={args.threads}|{Path(folder).resolve()}|"
                f"{spec.codec_fingerprint}",
                lambda folder=folder: load_onnx_edge(folder, args.threads)))
        return codecs
    # codec.json read as JSON, not through AlignedVQ.read_config: choosing needs only the
    # codec's geometry, and the torch edge of a path not taken is never imported.
    for folder in args.codec:
        config = Path(folder) / "codec.json"
        if not config.is_file():
            raise BadInput(f"no codec at {folder} (expected codec.json, as `alignedvq "
                           f"train-codec` writes it)")
        meta = json.loads(config.read_text())
        coded_tokens = meta["tokens"] - meta.get("uncoded_tokens", 0)  # the ones that cross
        codecs.append(EdgeCodec(
            meta["split_layer"], meta["vision_fingerprint"], meta["fingerprint"], coded_tokens,
            meta["bits"], meta["stages"],
            f"torch|{args.device}|{args.dtype}|{meta['fingerprint']}",
            lambda folder=folder: load_torch_edge(args, folder)))
    return codecs


def build_image(args: argparse.Namespace, onnx_edge):
    """Checked (image mode) or made into the model's input square (feature modes) before the
    model loads and before anything goes on the network: a bad file exits 2 at once, and a
    large image is decoded while the process is still small."""
    if args.mode == IMAGE_MODE:
        check_image(args.image, args.max_image_pixels)
        return None
    # The ONNX edge knows its input size from its sidecar: a device needs no checkpoint.
    if onnx_edge is None and args.runtime == "onnx":  # --mode auto: its graphs load when used
        from edge_agent.edge_spec import EdgeSpec

        size = EdgeSpec.load(Path(args.onnx_dir[0])).image_size
    else:
        size = onnx_edge.image_size if onnx_edge else checkpoint_image_size(args.model)
    return load_model_input(args.image, size, args.max_image_pixels)


def build_call(args: argparse.Namespace):
    """(channel, stub, retry, metadata) for the question."""
    token = read_token(args.auth_token_file) if args.auth_token_file else None
    request_id = args.request_id or new_request_id()
    if not is_valid(request_id):
        raise ValueError(f"--request-id {request_id!r}: use 1-128 letters, digits or ._:/+=@-")
    metadata = (*(auth_metadata(token) or ()), (METADATA_KEY, request_id))
    ch = channel(args.server, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                 tls_server_name=args.tls_server_name)
    retry = Retrying(ch, grpc_target(args.server), args.timeout, wait=not args.no_wait,
                     on_wait=lambda e: print(
                         f"edge-agent: waiting for {args.server} ({e.code().name}: "
                         f"{e.details()}); retrying for up to --timeout {args.timeout:g} s",
                         file=sys.stderr, flush=True))
    if token and not (args.tls_ca or args.tls_cert):
        print("edge-agent: warning: sending the bearer token without TLS; anyone on the path "
              "can read it (add --tls-ca)", file=sys.stderr)
    return ch, pb_grpc.InferenceServiceStub(ch), retry, metadata


def build(args: argparse.Namespace) -> Session:
    # The ONNX edge loads before anything goes on the wire, so a missing export fails fast
    # (--mode auto reads each one's sidecar now and loads the graph it uses).
    auto = args.mode == AUTO
    onnx_edge = (load_onnx_edge(args.onnx_dir, args.threads)
                 if args.runtime == "onnx" and not auto else None)
    try:
        codecs = auto_codecs(args) if auto else []
        image = build_image(args, onnx_edge)
        ch, stub, retry, metadata = build_call(args)
        # A value protobuf cannot hold (a negative --seed) is a ValueError here.
        generation = generation_params(args)
    except ImageRefused:
        raise
    except (OSError, ValueError, KeyError) as e:  # bad flags or files; later ones would be bugs
        raise BadInput(str(e)) from e
    return Session(args, image, onnx_edge, ch, stub, retry, metadata, codecs, generation)


# --- ask -------------------------------------------------------------------------------------

def ask(s: Session, question: str | None = None, history=(), stream=None) -> Result:
    """One question (default ``--question``) about the image, which this request sends;
    ``history``: earlier (question, answer) turns (``--chat`` sending the image again)."""
    args = s.args
    question = args.question if question is None else question
    if stream is None:
        stream = (lambda t: None) if args.json else (lambda t: print(t, end="", flush=True))
    turn = dict(generation=s.generation, history=history)
    if args.mode == AUTO:
        if s.asker is None:
            where = args.auto_cache or str(default_cache_path())
            cache = AutoCache(None if where.lower() == "none" else Path(where))
            s.asker = AutoAsker(s.stub, args.server, s.codecs, cache, s.metadata, s.retry,
                                args.jpeg_quality)
        s.asker.metadata = s.metadata  # --chat: this turn's request id
        result, choice = s.asker.ask(s.image, question, args.max_new_tokens, stream, **turn)
        result.auto = choice.as_json()
        return result
    if args.mode == IMAGE_MODE:
        info = server_info(s.stub, metadata=s.metadata, retry=s.retry)
        image = load_model_input(args.image, info.image_size, args.max_image_pixels)
        return ask_with_image(s.stub, image, question, info.image_size, args.jpeg_quality,
                              args.max_new_tokens, stream, metadata=s.metadata, retry=s.retry,
                              **turn)
    info = server_info(s.stub, metadata=s.metadata, retry=s.retry) if args.check_server \
        else None
    # Loaded after --check-server's answer, as before: a server that is down or still loading
    # is waited for before the torch edge's start-up is paid (the comparison itself needs the
    # edge's fingerprints, so an incompatible server is refused after it). Kept for --chat.
    s.edge = s.edge or load_torch_edge(args)
    if info is not None:
        check_compatible(info, s.edge)
    return ask_with_codes(s.stub, s.edge, s.image, question, args.max_new_tokens, stream,
                          metadata=s.metadata, retry=s.retry, **turn)


def chat(s: Session) -> int:
    """``--chat``: the conversation (edge_agent/chat.py); the first turn, and any turn that has
    to send the image again, is :func:`ask`'s."""
    conversation = Chat(s, lambda question, history, stream: ask(s, question, history, stream))
    return conversation.run(s.args.question, sys.stdin)


# --- report ----------------------------------------------------------------------------------

def report(args: argparse.Namespace, result: Result) -> None:
    if args.dump_payload:
        Path(args.dump_payload).write_text(json.dumps({
            "method": METHODS[result.mode],
            "messages_base64": [base64.b64encode(m).decode() for m in result.messages]}))
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        chosen = (f" (auto: {result.auto['path']}, predicted {result.auto['predicted_ms']:.0f} ms)"
                  if result.auto else "")
        print(f"\n[{result.mode}{chosen}: {result.payload_bytes} B sent, edge "
              f"{result.edge_ms:.0f} ms, network {result.network_ms:.0f} ms, cloud "
              f"{result.cloud_ms:.0f} ms, total {result.total_ms:.0f} ms]", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    session = None
    try:
        args = parse(argv)
        session = build(args)
        if args.chat:
            return chat(session)
        result = ask(session)
    except Exception as error:
        code = exit_for(error, session)
        if code is None:
            raise
        return code
    report(args, result)
    return 0


def console_main() -> None:
    """The ``edge-agent`` command: ends as soon as the answer is out (common._runtime.fast_exit)."""
    exit_now(main())


if __name__ == "__main__":
    console_main()
