"""The edge side of ``alignedvq bench auto``: one long-lived process (inside the edge namespace
when the link is emulated with namespaces), a sibling of ``latency_client``.

It loads one torch encoder per shipped codec (split layers 4 and 1 of the embedded model) and
keeps one gRPC channel open, so neither model load nor connection set-up is timed. Then it
answers commands on stdin, one JSON object a line, each with one JSON line:

``{"op": "condition", "repeats": N, "paths": [...]}``
    One unmeasured warm-up request per path, then N measured ones per path, the order rotated
    each repeat. ``image`` makes the RPCs a one-shot ``edge-agent --mode image`` makes
    (GetServerInfo, then AnswerFromImage); ``codes@K`` one AnswerFromCodes with the split-K
    encoder; ``auto`` asks through one :class:`edge_agent.auto.AutoAsker` kept for the
    condition, whose cache starts as the snapshot taken at start-up less the link (see
    ``_fresh_cache``), so its first request probes. ``total_ms`` of ``auto`` is the wall time of
    ``AutoAsker.ask``: the JPEG it always encodes, any probe, the choice and the call.

``{"op": "probe", "sizes": {path: [bytes, ...]}, "repeats": N}``
    The 7B geometry's network time: per repeat and path (rotated), one ProbeLink request of
    exactly that many bytes (sample ``i`` uses ``sizes[path][i % len]``), and the link as
    ``--mode auto`` would probe it (``edge_agent.auto.probe_link``, with the first size of
    ``image``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import grpc

from common.imaging.policy import open_image
from common.paths import DEFAULT_MODEL_DIR, SAMPLES_DIR, SHIPPED_CODEC_DIRS
from common.wire.modes import ALIGNEDVQ


class TimingInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Counts the calls started on the channel and sums the time of the blocking unary ones per
    method (ProbeLink, GetServerInfo: their continuation returns once answered)."""

    def __init__(self):
        self.calls = 0
        self.unary_ms: dict[str, float] = {}

    def _count(self, continuation, details, request):
        self.calls += 1
        return continuation(details, request)

    def intercept_unary_unary(self, continuation, details, request):
        self.calls += 1
        started = time.perf_counter()
        try:
            return continuation(details, request)
        finally:
            name = details.method.rsplit("/", 1)[-1]
            self.unary_ms[name] = (self.unary_ms.get(name, 0.0)
                                   + (time.perf_counter() - started) * 1000)

    intercept_unary_stream = intercept_stream_unary = intercept_stream_stream = _count


def padding_for(total_bytes: int) -> int:
    """The padding that makes a serialised ProbeLinkRequest exactly ``total_bytes`` long (field
    tag + length varint + padding), so a probe weighs what the path's request weighs."""
    from alignedvq.v1 import inference_pb2 as pb

    n = max(0, total_bytes - 2)
    while n > 0 and pb.ProbeLinkRequest(padding=bytes(n)).ByteSize() > total_bytes:
        n -= 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.auto_client")
    p.add_argument("--server", required=True)
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the edge: 1, as in latency_client (the server and "
                        "the link share this machine's cores)")
    p.add_argument("--wait-seconds", type=float, default=600.0)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)

    from alignedvq.v1 import inference_pb2 as pb
    from alignedvq.v1 import inference_pb2_grpc as pb_grpc
    from common.wire.channels import channel, grpc_target
    from edge_agent.auto import AutoAsker, AutoCache, EdgeCodec, probe_link
    from edge_agent.client import ask_with_codes, ask_with_image, check_compatible, server_info
    from edge_agent.latency_model import LatencyModel, Path
    from edge_agent.retry import Retrying
    from edge_agent.torch_edge import EdgeHalf

    timing = TimingInterceptor()
    raw = channel(args.server)
    stub = pb_grpc.InferenceServiceStub(grpc.intercept_channel(raw, timing))
    info = server_info(stub, retry=Retrying(raw, grpc_target(args.server), args.wait_seconds))
    # As edge-agent gives its AutoAsker (--timeout's default): one attempt when all is well.
    retry = Retrying(raw, grpc_target(args.server), 120.0)
    encoders, codecs = {}, []
    for folder in SHIPPED_CODEC_DIRS:
        edge = EdgeHalf(DEFAULT_MODEL_DIR, folder, ALIGNEDVQ, device="cpu")
        check_compatible(info, edge)
        encoders[edge.split_layer] = edge
        meta = json.loads((folder / "codec.json").read_text())
        # The key edge-agent --mode auto --runtime torch gives this encoder (edge_agent.cli).
        codecs.append(EdgeCodec(edge.split_layer, edge.vision_fingerprint,
                                edge.codec_fingerprint, meta["tokens"], meta["bits"],
                                meta["stages"], f"torch|cpu|float32|{meta['fingerprint']}",
                                lambda edge=edge: edge))
    samples = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text()
               .splitlines() if line.strip()]
    images = {s["image"]: open_image(SAMPLES_DIR / s["image"]) for s in samples}

    def asker(cache: AutoCache) -> AutoAsker:
        a = AutoAsker(stub, args.server, codecs, cache, retry=retry,
                      jpeg_quality=args.jpeg_quality)
        # The encoders are loaded and have run in this process: their timings count from the
        # first call (edge_agent/latency_model.py, edge_warm).
        a.encoders = dict(encoders)
        a.warm |= {Path(layer) for layer in encoders}
        return a

    def fixed(path: str, s: dict) -> dict:
        image = images[s["image"]]
        if path == "image":  # as edge_agent.cli.ask: the input size first, then the upload
            size = server_info(stub, timeout=120).image_size
            return ask_with_image(stub, image, s["question"], size, args.jpeg_quality,
                                  timeout=120).as_json()
        edge = encoders[int(path.split("@")[1])]
        return ask_with_codes(stub, edge, image, s["question"], timeout=120).as_json()

    def ask(path: str, k: int, auto: AutoAsker | None) -> dict:
        s = samples[k % len(samples)]
        calls, probe_before = timing.calls, timing.unary_ms.get("ProbeLink", 0.0)
        started = time.perf_counter()
        extra = {}
        if path == "auto":
            result, choice = auto.ask(images[s["image"]], s["question"])
            row = result.as_json()
            extra = {"chosen": choice.chosen.path.name, "probed": choice.probed,
                     "profiled": choice.profiled,
                     "predicted_ms": round(choice.chosen.total_ms, 2),
                     "probe_ms": round(timing.unary_ms.get("ProbeLink", 0.0) - probe_before, 2)}
        else:
            row = fixed(path, s)
        row["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
        row["network_ms"] = round(max(0.0, row["total_ms"] - row["edge_ms"] - row["cloud_ms"]), 2)
        return {"path": path, **{k: row[k] for k in ("total_ms", "edge_ms", "network_ms",
                                                     "cloud_ms", "payload_bytes", "answer",
                                                     "split_layer")},
                "rpcs": timing.calls - calls, "expected": s["answer"], **extra}

    # Start-up, untimed: each fixed path twice (first runs pay one-time costs), then one auto
    # request from an empty cache, which profiles this edge (each codes path run twice on the
    # image, edge_agent/auto.py) and teaches it the server's info and times.
    start_cache = AutoCache(None)
    for k in range(2):
        for path in ("image", *(f"codes@{layer}" for layer in encoders)):
            ask(path, k, None)
    ask("auto", 0, asker(start_cache))
    snapshot = copy.deepcopy(start_cache.data)

    def _fresh_cache() -> AutoCache:
        """The start-up snapshot (the edge's profile, the server's info and per-path times) with
        the link forgotten: a device that just moved to another network."""
        cache = AutoCache(None)
        cache.data = copy.deepcopy(snapshot)
        cache.data["servers"][args.server].pop("link", None)
        return cache

    print(json.dumps({"ready": True, "torch_threads": torch.get_num_threads(),
                      "profile": snapshot["edges"],
                      "server_ms": snapshot["servers"][args.server].get("server_ms", {})}),
          flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "condition":
            paths = command["paths"]
            auto = asker(_fresh_cache()) if "auto" in paths else None
            warmup = {path: ask(path, 0, auto) for path in paths}
            results = []
            for k in range(command["repeats"]):
                for path in paths[k % len(paths):] + paths[:k % len(paths)]:
                    results.append(ask(path, k, auto))
            print(json.dumps({"warmup": warmup, "results": results}), flush=True)
        elif command["op"] == "probe":
            sizes = command["sizes"]
            names = list(sizes)
            model = LatencyModel()
            probe_link(stub, model, sizes["image"][0], None, lambda call: call(120))
            samples_ms = {name: [] for name in names}
            for k in range(command["repeats"]):
                for name in names[k % len(names):] + names[:k % len(names)]:
                    request = pb.ProbeLinkRequest(
                        padding=bytes(padding_for(sizes[name][k % len(sizes[name])])))
                    started = time.perf_counter()
                    stub.ProbeLink(request, timeout=120)
                    samples_ms[name].append(round((time.perf_counter() - started) * 1000, 3))
            print(json.dumps({"link": {"rtt_ms": model.link.rtt_ms,
                                       "kbit_per_s": model.link.kbit_per_s},
                              "network_ms": samples_ms}), flush=True)
        else:
            raise ValueError(f"unknown op {command['op']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
