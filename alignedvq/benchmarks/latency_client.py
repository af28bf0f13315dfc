"""The edge side of the latency benchmark, one long-lived process (inside the edge namespace when
the link is emulated with namespaces).

It loads the edge half once and keeps one gRPC channel open, so neither the model load nor the
connection set-up is counted. Then it answers commands on stdin, one JSON object a line:
``{"repeats": N}`` -> one JSON line with N requests per mode, modes interleaved (the order rotates
each repeat, so neither path always runs first). Every request makes the RPCs a one-shot
``edge-agent`` question makes, with the same client library calls: a feature mode one
(``ask_with_codes``: AnswerFromCodes, the server checks compatibility itself), the image mode two
(``server_info`` for the server's input size, then ``ask_with_image``). ``total_ms`` spans all of
them, ``network_ms`` is what is left of it after the edge's and the server's own time, and
``rpcs`` is how many calls went on the wire, counted by a client interceptor on the channel.
The start-up compatibility check (GetServerInfo, once, retried while the server is still
loading) is not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc

from common.imaging.policy import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from common.wire.modes import ALIGNEDVQ, FP16, IMAGE_MODE

MODES = (ALIGNEDVQ, IMAGE_MODE, FP16)


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                          grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Counts the calls started on the channel, whatever their kind (retries would count too)."""

    def __init__(self):
        self.calls = 0

    def _count(self, continuation, details, request):
        self.calls += 1
        return continuation(details, request)

    intercept_unary_unary = intercept_unary_stream = _count
    intercept_stream_unary = intercept_stream_stream = _count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.latency_client")
    p.add_argument("--server", required=True)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests per mode")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the edge half: 1, because the server and the link "
                        "share this machine's cores, and spinning intra-op threads competing "
                        "with them turned a ~5 ms vision pass into hundreds of ms")
    p.add_argument("--wait-seconds", type=float, default=600.0,
                   help="how long to wait for a server that is still starting")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)

    from alignedvq.v1 import inference_pb2_grpc as pb_grpc
    from common.wire.channels import channel, grpc_target
    from edge_agent.client import ask_with_codes, ask_with_image, check_compatible, server_info
    from edge_agent.retry import Retrying
    from edge_agent.torch_edge import EdgeHalf

    modes = args.modes.split(",")
    counter = CountingInterceptor()
    raw = channel(args.server)
    stub = pb_grpc.InferenceServiceStub(grpc.intercept_channel(raw, counter))
    # The server may still be loading (the benchmark starts this worker as soon as it listens):
    # wait for it as edge-agent does.
    info = server_info(stub, retry=Retrying(raw, grpc_target(args.server), args.wait_seconds))
    edges = {}
    for mode in modes:
        if mode != "image":
            edges[mode] = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, mode, device="cpu")
            check_compatible(info, edges[mode])
    samples = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text()
               .splitlines() if line.strip()]
    images = {s["image"]: open_image(SAMPLES_DIR / s["image"]) for s in samples}

    def ask(mode: str, k: int) -> dict:
        """One question as a one-shot edge-agent asks it (edge_agent.cli.ask), all RPCs timed."""
        s = samples[k % len(samples)]
        calls, started = counter.calls, time.perf_counter()
        if mode == "image":
            size = server_info(stub, timeout=120).image_size
            r = ask_with_image(stub, images[s["image"]], s["question"], size,
                               args.jpeg_quality, timeout=120)
        else:
            r = ask_with_codes(stub, edges[mode], images[s["image"]], s["question"],
                               timeout=120)
        answer_ms = r.total_ms  # the answering RPC alone
        r.total_ms = (time.perf_counter() - started) * 1000
        r.network_ms = max(0.0, r.total_ms - r.edge_ms - r.cloud_ms)
        return {**r.as_json(), "answer_ms": round(answer_ms, 2), "rpcs": counter.calls - calls,
                "expected": s["answer"], "image": s["image"]}

    for k in range(args.warmup):
        for mode in modes:
            ask(mode, k)
    print(json.dumps({"ready": True, "image_size": info.image_size,
                      "torch_threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        results = []
        for k in range(command["repeats"]):
            order = modes[k % len(modes):] + modes[:k % len(modes)]
            for mode in order:
                results.append(ask(mode, k))
        print(json.dumps({"results": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
