"""``alignedvq bench batching``: answers per second and latency of the real cloud-server with
dynamic batching off (``--max-batch-size 1``) and on, side by side in one run, at 1, 4, 16 and
32 concurrent clients.

Clients replay pre-encoded AlignedVQ requests (the edge's work is done once, before timing), so
what is measured is the server: gRPC, decoding, the batched language model, streaming. Each
client is a thread with its own channel in this process; the server is its own process.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time

import grpc
import torch

from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from cloud_server.launch import ServerProcess
from common.llava_io import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from common.pipeline import EdgeHalf

CLIENTS = (1, 4, 16, 32)
SETTINGS = {"off": ["--max-batch-size", "1"], "on": []}


def _payloads() -> list[list[bytes]]:
    """Each sample image with each of its questions, as serialized AnswerFromCodes messages."""
    edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, "alignedvq")
    rows = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text()
            .splitlines()]
    payloads = []
    for row in rows:
        chunks = edge.chunks([open_image(SAMPLES_DIR / row["image"])])[0]
        payloads.append(edge.messages(chunks, row["question"]))
    return payloads


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _drive(address: str, clients: int, seconds: float, payloads) -> dict:
    """``clients`` threads send requests back to back for ``seconds``; each counts what it got."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))
        i = k
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            messages = payloads[i % len(payloads)]
            i += clients
            t0 = time.perf_counter()
            try:
                responses = list(stub.AnswerFromCodes(iter(messages), timeout=120))
                assert responses[-1].summary.answer is not None
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1000)
            except grpc.RpcError as e:
                with lock:
                    failures.append(e.code().name)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    return {"clients": clients, "answers": len(latencies), "failed": len(failures),
            "seconds": round(elapsed, 2),
            "answers_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(_percentile(latencies, 0.99), 1) if latencies else None}


def run(quick: bool = False, clients=CLIENTS, progress=print) -> dict:
    seconds = 3.0 if quick else 15.0
    payloads = _payloads()
    points = []
    for setting, flags in SETTINGS.items():
        with ServerProcess(*flags) as server:
            server.wait_ready()
            _drive(server.address, 2, 1.0, payloads)  # warm the channels and the model
            for n in clients:
                point = {"batching": setting, **_drive(server.address, n, seconds, payloads)}
                progress(f"batching {setting:3} clients {n:2}: {point['answers_per_s']:7.1f} "
                         f"answers/s  p50 {point['p50_ms']} ms  p99 {point['p99_ms']} ms")
                points.append(point)
    by = {(p["batching"], p["clients"]): p for p in points}
    speedups = {n: round(by["on", n]["answers_per_s"] / by["off", n]["answers_per_s"], 2)
                for n in clients if by["off", n]["answers_per_s"] > 0}
    return {
        "benchmark": "batching",
        "command": "alignedvq bench batching" + (" --quick" if quick else ""),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch": torch.__version__},
        "model": str(DEFAULT_MODEL_DIR.name), "seconds_per_point": seconds,
        "points": points, "speedup": speedups, "speedup_at_16": speedups.get(16),
    }


def table(report: dict) -> str:
    by = {(p["batching"], p["clients"]): p for p in report["points"]}
    lines = ["| clients | off: answers/s | on: answers/s | speed-up | off p50 / p99 ms | "
             "on p50 / p99 ms |", "|---|---|---|---|---|---|"]
    for n in sorted({p["clients"] for p in report["points"]}):
        off, on = by["off", n], by["on", n]
        lines.append(f"| {n} | {off['answers_per_s']} | {on['answers_per_s']} | "
                     f"{report['speedup'].get(n)}x | {off['p50_ms']} / {off['p99_ms']} | "
                     f"{on['p50_ms']} / {on['p99_ms']} |")
    return "\n".join(lines)


def main(quick: bool = False, as_json: bool = False) -> int:
    report = run(quick, progress=(lambda _: None) if as_json else print)
    if as_json:
        print(json.dumps(report))
    else:
        print(table(report))
        print(f"speed-up at 16 clients: {report['speedup_at_16']}x  ({report['command']})")
    failed = sum(p["failed"] for p in report["points"])
    return 1 if failed else 0
