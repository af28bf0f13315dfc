"""``alignedvq bench batching``: answers per second and latency of the real cloud-server with
dynamic batching off (``--max-batch-size 1``) and on, side by side in one run, at 1, 4, 16 and
32 concurrent clients. ``--engines both`` adds the vLLM engine (``--engine vllm``, its own
continuous batching, up to 32 running) to the same run; ``--engines vllm`` compares it with
the builtin engine's batching off only.

Clients replay pre-encoded AlignedVQ requests (the edge's work is done once, before timing), so
what is measured is the server: gRPC, decoding, the batched language model, streaming. Each
client is a thread with its own channel in this process (``alignedvq.benchmarks.drive``); the server is
its own process.
"""

from __future__ import annotations

import json
from contextlib import closing

from alignedvq.benchmarks.drive import drive, each_server, sample_requests
from alignedvq.benchmarks.machine import describe
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR

CLIENTS = (1, 4, 16, 32)
SETTINGS = {"off": ["--max-batch-size", "1"], "on": [],
            "vllm": ["--engine", "vllm", "--max-batch-size", "32"]}
ENGINES = {"builtin": ("off", "on"), "vllm": ("off", "vllm"), "both": ("off", "on", "vllm")}


def run(quick: bool = False, clients=CLIENTS, progress=print, model=DEFAULT_MODEL_DIR,
        codec=DEFAULT_CODEC_DIR, engines: str = "builtin", seconds: float | None = None) -> dict:
    # quick: a smoke run (the test suite's), half a second a point, the servers started
    # together (each is still measured alone: each_server).
    seconds = seconds or (0.5 if quick else 15.0)
    requests = sample_requests(model=model, codec=codec)
    points = []
    # vLLM: its engine core process starts and loads first.
    with closing(each_server([[*SETTINGS[s], "--model", str(model), "--codec", str(codec)]
                              for s in ENGINES[engines]], together=quick,
                             ready_timeout=1800)) as servers:
        for server, setting in zip(servers, ENGINES[engines]):
            drive(server.address, 2, min(seconds, 1.0), requests)  # warm channels and model
            for n in clients:
                point = {"batching": setting, **drive(server.address, n, seconds, requests)}
                progress(f"batching {setting:3} clients {n:2}: {point['answers_per_s']:7.1f} "
                         f"answers/s  p50 {point['p50_ms']} ms  p99 {point['p99_ms']} ms")
                points.append(point)
    by = {(p["batching"], p["clients"]): p for p in points}
    # String keys, as JSON has them, so a report read back renders the same.
    # Each setting against batching off, at every client count.
    speedup_of = {setting: {str(n): round(by[setting, n]["answers_per_s"]
                                          / by["off", n]["answers_per_s"], 2)
                            for n in clients if by["off", n]["answers_per_s"] > 0}
                  for setting in ENGINES[engines] if setting != "off"}
    speedups = speedup_of.get("on", {})
    vllm_speedups = speedup_of.get("vllm", {})
    return {
        "benchmark": "batching",
        "command": "alignedvq bench batching" + (" --quick" if quick else "")
        + ("" if engines == "builtin" else f" --engines {engines}")
        + ("" if str(model) == str(DEFAULT_MODEL_DIR) else f" --model {model} --codec {codec}"),
        "engines": engines, "vllm_speedup": vllm_speedups,
        "vllm_speedup_at_16": vllm_speedups.get("16"),
        "machine": describe(),
        "model": str(model), "codec": str(codec), "seconds_per_point": seconds,
        "points": points, "speedup": speedups, "speedup_at_16": speedups.get("16"),
    }


LABELS = {"off": "builtin, batching off", "on": "builtin, batching on", "vllm": "vLLM"}


def table(report: dict) -> str:
    by = {(p["batching"], p["clients"]): p for p in report["points"]}
    settings = [s for s in ("off", "on", "vllm") if any(p["batching"] == s
                                                        for p in report["points"])]
    speedup = {"on": report["speedup"], "vllm": report.get("vllm_speedup", {})}
    head = ["clients"] + [f"{LABELS[s]}: answers/s" for s in settings] \
        + [f"{LABELS[s]} vs off" for s in settings if s != "off"] \
        + [f"{LABELS[s]}: p50 / p99 ms" for s in settings]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in sorted({p["clients"] for p in report["points"]}):
        row = [str(n)] + [str(by[s, n]["answers_per_s"]) for s in settings] \
            + [f"{speedup[s].get(str(n))}x" for s in settings if s != "off"] \
            + [f"{by[s, n]['p50_ms']} / {by[s, n]['p99_ms']}" for s in settings]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(quick: bool = False, as_json: bool = False, model=DEFAULT_MODEL_DIR,
         codec=DEFAULT_CODEC_DIR, engines: str = "builtin") -> int:
    report = run(quick, progress=(lambda _: None) if as_json else print, model=model,
                 codec=codec, engines=engines)
    if as_json:
        print(json.dumps(report))
    else:
        print(table(report))
        if report["speedup_at_16"] is not None:
            print(f"builtin batching on vs off at 16 clients: {report['speedup_at_16']}x")
        if report["vllm_speedup_at_16"] is not None:
            print(f"vLLM vs builtin batching off at 16 clients: "
                  f"{report['vllm_speedup_at_16']}x")
        print(f"({report['command']})")
    failed = sum(p["sent"] - p["answered"] for p in report["points"])
    return 1 if failed else 0
