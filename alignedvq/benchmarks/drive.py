"""Closed-loop load on a real server: N client threads, each with its own channel, send
pre-built requests back to back for a fixed time and record every outcome; the servers of a run,
one after another. Shared by the batching benchmark and the load test."""

from __future__ import annotations

import collections
import json
import statistics
import threading
import time

import grpc

from alignedvq.server_process import ServerProcess
from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf


def each_server(flag_sets, together: bool = False, ready_timeout: float = 180.0):
    """Yields a ready ``cloud-server`` for each list of flags in turn, stopping each after its
    turn, so only one is measured at a time. ``together``: all start at once (their loading
    overlaps) and each waits, loaded and idle, for its turn; no server is still loading while
    another is measured. Otherwise each starts when its turn comes."""
    if not together:
        for flags in flag_sets:
            with ServerProcess(*flags, ready_timeout=ready_timeout) as server:
                yield server.wait_ready(ready_timeout)
        return
    servers = []
    try:
        for flags in flag_sets:
            servers.append(ServerProcess(*flags, wait=False))
        for server in servers:
            server.wait_ready(ready_timeout)
        for server in servers:
            yield server
            server.terminate()
    finally:
        for server in servers:
            server.terminate()


def sample_requests(modes=("alignedvq",), model=DEFAULT_MODEL_DIR,
                    codec=DEFAULT_CODEC_DIR) -> list[tuple[str, object]]:
    """Every sample image with each of its questions, as ("codes", messages) for feature modes
    or ("image", AnswerFromImageRequest) for JPEG-90 uploads: the edge's work done up front."""
    rows = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text()
            .splitlines()]
    edges = {m: EdgeHalf(model, codec, m) for m in modes if m != "image"}
    requests = []
    for i, row in enumerate(rows):
        mode = modes[i % len(modes)]
        image = open_image(SAMPLES_DIR / row["image"])
        if mode == "image":
            size = next(iter(edges.values())).vision.config.vision_config.image_size \
                if edges else 128
            requests.append(("image", pb.AnswerFromImageRequest(
                image=jpeg_baseline(image, size, 90), question=row["question"])))
        else:
            edge = edges[mode]
            requests.append(("codes", edge.messages(edge.chunks([image])[0], row["question"])))
    return requests


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def drive(address: str, clients: int, seconds: float, requests, timeout: float = 120,
          backoff_s: float = 0.05) -> dict:
    """``clients`` threads send requests back to back for ``seconds``; returns counts by status
    code and the latency of the answered ones."""
    latencies: list[float] = []
    codes: collections.Counter = collections.Counter()
    lock = threading.Lock()
    gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))
        i = k
        gate.wait()
        while time.perf_counter() < stop_at[0]:
            kind, request = requests[i % len(requests)]
            i += clients
            t0 = time.perf_counter()
            try:
                if kind == "image":
                    responses = list(stub.AnswerFromImage(request, timeout=timeout))
                else:
                    responses = list(stub.AnswerFromCodes(iter(request), timeout=timeout))
                ok = responses and responses[-1].WhichOneof("part") == "summary"
                with lock:
                    codes["OK" if ok else "NO_SUMMARY"] += 1
                    if ok:
                        latencies.append((time.perf_counter() - t0) * 1000)
            except grpc.RpcError as e:
                with lock:
                    codes[e.code().name] += 1
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    # As the refusal asks: back off, as a well-behaved edge does. Retrying at
                    # once would turn the test into a retry storm that measures only refusals.
                    time.sleep(backoff_s)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    return {"clients": clients, "seconds": round(elapsed, 2), "sent": sum(codes.values()),
            "answered": codes["OK"], "codes": dict(codes),
            "answers_per_s": round(codes["OK"] / elapsed, 2),
            "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None}
