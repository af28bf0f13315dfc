"""``alignedvq answer-worker``: one long-lived process answering questions about images through
the split, over JSON Lines on stdin/stdout. It is the stable interface that tools living in
another Python environment use (the lmms-eval adapter, ``integrations/lmms_eval/``), so they
need neither this project's dependencies nor its protobuf stubs.

Protocol (version 1), one JSON object per line:

- the worker first writes ``{"ready": true, "protocol": 1, "mode": ..., ...}`` once loaded;
- a request is ``{"id": ANY, "batch": [{"image": PATH, "question": TEXT}, ...],
  "max_new_tokens": N}`` (``max_new_tokens`` optional, default 8 as ``alignedvq eval``);
- its response is ``{"id": ANY, "results": [{"answer": TEXT, "payload_bytes": N | null}
  or {"error": TEXT}, ...]}``, in the batch's order: an image that fails to load is an error
  for that item only;
- a line that is not a valid request is answered ``{"id": ANY | null, "error": TEXT}``;
- end of input ends the worker (exit 0).

A batch is answered in one generate() call, exactly as ``alignedvq eval`` answers one batch
(the same answerers, :mod:`alignedvq.evaluation.evaluate`), so the same questions batched the
same way get the same answers. With ``--server`` the codes (or the JPEG) go to a running
``cloud-server`` over gRPC instead, one RPC per question, sent concurrently so the server
batches them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
from pathlib import Path
from typing import IO

PROTOCOL_VERSION = 1
DEFAULT_MAX_NEW_TOKENS = 8  # what `alignedvq eval` generates per answer


class RequestError(ValueError):
    """A line that is not a valid request; answered with an error line, the worker goes on."""


class InProcessAnswerer:
    """The edge half, the codec and the cloud half in this process: ``alignedvq eval``'s own
    answerers, so the answers are eval's. ``__call__`` returns (answers, payload bytes per image
    or None)."""

    def __init__(self, model_dir: Path, mode: str, codec_dir: Path | None,
                 split_layer: int | None, device: str):
        from alignedvq.evaluation.evaluate import make_answerer

        self.answerer = make_answerer(mode, model_dir, device, codec_dir, split_layer)
        self._payloads = getattr(self.answerer, "payload_bytes", None)

    def __call__(self, images, questions, max_new_tokens: int):
        answers = self.answerer(images, questions, [()] * len(questions), max_new_tokens)
        if self._payloads is None:
            return answers, [None] * len(answers)
        sizes = self._payloads[-len(images):]
        del self._payloads[:]  # a worker lives long: keep no history
        if hasattr(self.answerer, "fp16_bytes"):
            del self.answerer.fp16_bytes[:]
        return answers, sizes


class RemoteAnswerer:
    """The edge half here, the cloud half a running ``cloud-server`` (what ``edge-agent``
    does, through the same client functions). One RPC per question, sent concurrently."""

    def __init__(self, model_dir: Path, mode: str, codec_dir: Path | None,
                 split_layer: int | None, device: str, server: str, timeout: float,
                 concurrency: int):
        from alignedvq.v1 import inference_pb2_grpc as pb_grpc
        from common.wire.channels import channel, grpc_target
        from common.wire.modes import ALIGNEDVQ, IMAGE_MODE
        from edge_agent.client import server_info
        from edge_agent.retry import Retrying

        self.mode = mode
        self.channel = channel(server)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)
        self.retry = Retrying(self.channel, grpc_target(server), timeout)
        # Waits for a server that is still starting, and learns the JPEG's size.
        self.info = server_info(self.stub, retry=self.retry)
        self.edge = None
        if mode != IMAGE_MODE:
            from edge_agent.client import check_compatible
            from edge_agent.torch_edge import EdgeHalf

            self.edge = EdgeHalf(model_dir, codec_dir if mode == ALIGNEDVQ else None, mode,
                                 split_layer, device)
            check_compatible(self.info, self.edge)
        self.pool = concurrent.futures.ThreadPoolExecutor(concurrency,
                                                          thread_name_prefix="answer-rpc")

    def _ask(self, image, question: str, max_new_tokens: int):
        from edge_agent.client import ask_with_codes, ask_with_image

        if self.edge is None:
            return ask_with_image(self.stub, image, question, self.info.image_size,
                                  max_new_tokens=max_new_tokens, retry=self.retry)
        return ask_with_codes(self.stub, self.edge, image, question, max_new_tokens,
                              retry=self.retry)

    def __call__(self, images, questions, max_new_tokens: int):
        results = list(self.pool.map(lambda iq: self._ask(*iq, max_new_tokens),
                                     zip(images, questions)))
        return [r.answer for r in results], [r.payload_bytes for r in results]


def parse_request(line: str) -> dict:
    try:
        request = json.loads(line)
    except json.JSONDecodeError as e:
        raise RequestError(f"not JSON ({e.msg})") from None
    if not isinstance(request, dict) or not isinstance(request.get("batch"), list):
        raise RequestError('a request is an object with a "batch" list')
    for i, item in enumerate(request["batch"]):
        if not (isinstance(item, dict) and isinstance(item.get("image"), str)
                and isinstance(item.get("question"), str)):
            raise RequestError(f'batch[{i}] needs string fields "image" and "question"')
    budget = request.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise RequestError('"max_new_tokens" is a positive integer')
    return request


def answer_request(answerer, request: dict) -> list[dict]:
    """Results in the batch's order; images that fail to load are per-item errors (as in
    ``alignedvq eval``), the rest are answered together."""
    from common.imaging.policy import open_image

    results: list[dict] = [{} for _ in request["batch"]]
    images, questions, slots = [], [], []
    for i, item in enumerate(request["batch"]):
        try:
            images.append(open_image(Path(item["image"])))
        except (OSError, ValueError) as e:
            results[i] = {"error": str(e)}  # the policy's message names the file
            continue
        questions.append(item["question"])
        slots.append(i)
    if images:
        answers, sizes = answerer(images, questions, request.get("max_new_tokens",
                                                                 DEFAULT_MAX_NEW_TOKENS))
        for i, answer, size in zip(slots, answers, sizes):
            results[i] = {"answer": answer, "payload_bytes": size}
    return results


def serve(answerer, requests: IO[str], responses: IO[str]) -> None:
    """Answers request lines until end of input."""
    def write(obj: dict) -> None:
        responses.write(json.dumps(obj) + "\n")
        responses.flush()

    for line in requests:
        if not line.strip():
            continue
        request_id = None
        try:
            request = parse_request(line)
            request_id = request.get("id")
            write({"id": request_id, "results": answer_request(answerer, request)})
        except RequestError as e:
            write({"id": request_id, "error": str(e)})


def protocol_stdout() -> IO[str]:
    """The real stdout for protocol lines only; file descriptor 1 is pointed at stderr, so
    whatever a library prints (transformers' progress bars, a C library's warnings) cannot
    corrupt the protocol."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def build_answerer(args: argparse.Namespace):
    codec = Path(args.codec) if args.codec else None
    if args.server:
        return RemoteAnswerer(Path(args.model), args.mode, codec, args.split_layer, args.device,
                              args.server, args.timeout, args.concurrency)
    return InProcessAnswerer(Path(args.model), args.mode, codec, args.split_layer, args.device)


def run(args: argparse.Namespace) -> int:
    out = protocol_stdout()
    from alignedvq.evaluation.evaluate import OLD_MODE_NAMES

    args.mode = OLD_MODE_NAMES.get(args.mode, args.mode)
    try:
        answerer = build_answerer(args)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"answer-worker: error: {e}", file=sys.stderr)
        return 2
    out.write(json.dumps({"ready": True, "protocol": PROTOCOL_VERSION, "mode": args.mode,
                          "model": str(args.model), "codec": args.codec,
                          "server": args.server}) + "\n")
    out.flush()
    serve(answerer, sys.stdin, out)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``answer-worker`` on the ``alignedvq`` command's subparsers."""
    from alignedvq.evaluation.evaluate import MODES
    from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR

    p = subparsers.add_parser(
        "answer-worker", help="answer questions over JSON Lines on stdin/stdout (for tools in "
                              "another environment, e.g. lmms-eval; docs/lmms_eval.md)")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="local HF LLaVA checkpoint (default: the embedded model)")
    p.add_argument("--mode", choices=MODES, default="alignedvq",
                   help="as `alignedvq eval --mode`: original, alignedvq, fp16, int8, image")
    p.add_argument("--codec", default=str(DEFAULT_CODEC_DIR),
                   help="codec folder for --mode alignedvq (default: the shipped one)")
    p.add_argument("--split-layer", type=int, default=None,
                   help="vision block whose output crosses (default: the feature layer)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the edge half, and the "
                                                   "cloud half when in process)")
    p.add_argument("--server", default=None,
                   help="HOST:PORT of a running cloud-server: send the codes (or, in --mode "
                        "image, the JPEG) there instead of answering in process; not for "
                        "--mode original")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="with --server: seconds each RPC may wait and retry (a server still "
                        "starting is waited for)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="with --server: RPCs in flight at once")
    p.set_defaults(func=_checked_run)
    return p


def _checked_run(args: argparse.Namespace) -> int:
    if args.server and args.mode == "original":
        print("answer-worker: error: --mode original runs the unmodified model in process; "
              "it has no --server path", file=sys.stderr)
        return 2
    return run(args)


def main(argv: list[str] | None = None) -> int:
    """``python -m alignedvq.answer_worker``: the subcommand without the ``alignedvq`` parser."""
    from common._runtime.torchvision_cpu import install_import_hook

    install_import_hook()  # before any transformers import, as `alignedvq` does
    parser = argparse.ArgumentParser(prog="alignedvq answer-worker")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["answer-worker", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
