"""``alignedvq bench batching``: answers per second and latency of the real cloud-server with
dynamic batching off (``--max-batch-size 1``) and on, side by side in one run, at 1, 4, 16 and
32 concurrent clients.

Clients replay pre-encoded AlignedVQ requests (the edge's work is done once, before timing), so
what is measured is the server: gRPC, decoding, the batched language model, streaming. Each
client is a thread with its own channel in this process (``benchmarks.drive``); the server is
its own process.
"""

from __future__ import annotations

import json

from benchmarks.drive import drive, sample_requests
from benchmarks.machine import describe
from cloud_server.launch import ServerProcess
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR

CLIENTS = (1, 4, 16, 32)
SETTINGS = {"off": ["--max-batch-size", "1"], "on": []}


def run(quick: bool = False, clients=CLIENTS, progress=print, model=DEFAULT_MODEL_DIR,
        codec=DEFAULT_CODEC_DIR) -> dict:
    seconds = 1.0 if quick else 15.0  # quick: a smoke run (the test suite's), not a figure
    requests = sample_requests(model=model, codec=codec)
    points = []
    for setting, flags in SETTINGS.items():
        with ServerProcess(*flags, "--model", str(model), "--codec", str(codec)) as server:
            server.wait_ready()
            drive(server.address, 2, 1.0, requests)  # warm the channels and the model
            for n in clients:
                point = {"batching": setting, **drive(server.address, n, seconds, requests)}
                progress(f"batching {setting:3} clients {n:2}: {point['answers_per_s']:7.1f} "
                         f"answers/s  p50 {point['p50_ms']} ms  p99 {point['p99_ms']} ms")
                points.append(point)
    by = {(p["batching"], p["clients"]): p for p in points}
    # String keys, as JSON has them, so a report read back renders the same.
    speedups = {str(n): round(by["on", n]["answers_per_s"] / by["off", n]["answers_per_s"], 2)
                for n in clients if by["off", n]["answers_per_s"] > 0}
    return {
        "benchmark": "batching",
        "command": "alignedvq bench batching" + (" --quick" if quick else "")
        + ("" if str(model) == str(DEFAULT_MODEL_DIR) else f" --model {model} --codec {codec}"),
        "machine": describe(),
        "model": str(model), "codec": str(codec), "seconds_per_point": seconds,
        "points": points, "speedup": speedups, "speedup_at_16": speedups.get("16"),
    }


def table(report: dict) -> str:
    by = {(p["batching"], p["clients"]): p for p in report["points"]}
    lines = ["| clients | off: answers/s | on: answers/s | speed-up | off p50 / p99 ms | "
             "on p50 / p99 ms |", "|---|---|---|---|---|---|"]
    for n in sorted({p["clients"] for p in report["points"]}):
        off, on = by["off", n], by["on", n]
        lines.append(f"| {n} | {off['answers_per_s']} | {on['answers_per_s']} | "
                     f"{report['speedup'].get(str(n))}x | {off['p50_ms']} / {off['p99_ms']} | "
                     f"{on['p50_ms']} / {on['p99_ms']} |")
    return "\n".join(lines)


def main(quick: bool = False, as_json: bool = False, model=DEFAULT_MODEL_DIR,
         codec=DEFAULT_CODEC_DIR) -> int:
    report = run(quick, progress=(lambda _: None) if as_json else print, model=model,
                 codec=codec)
    if as_json:
        print(json.dumps(report))
    else:
        print(table(report))
        print(f"speed-up at 16 clients: {report['speedup_at_16']}x  ({report['command']})")
    failed = sum(p["sent"] - p["answered"] for p in report["points"])
    return 1 if failed else 0
