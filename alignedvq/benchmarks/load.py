"""``alignedvq bench load``: 32 concurrent edge clients for 60 s against the real cloud-server on
the embedded model, a mix of AlignedVQ requests and JPEG-90 uploads. Reports requests sent,
answered, refused with RESOURCE_EXHAUSTED (the bounded queue doing its job), failed otherwise
(must be 0), and p50/p99 latency of the answered ones.

It runs twice: with the default limits, and with a deliberately small queue
(``--max-batch-size 4 --max-queued 8``) so overload is visible as fast refusals rather than
growing latency. Both servers start together (the embedded model is small), then each is
measured alone while the other waits idle or is already stopped. Not a timed test: figures are
reported, never asserted.
"""

from __future__ import annotations

import json
from contextlib import closing

from alignedvq.benchmarks.drive import drive, each_server, sample_requests
from alignedvq.benchmarks.machine import describe

CONFIGS = {"default limits": [], "small queue": ["--max-batch-size", "4", "--max-queued", "8"]}


def run(clients: int = 32, seconds: float = 60.0, progress=print) -> dict:
    requests = sample_requests(("alignedvq", "alignedvq", "alignedvq", "image"))
    results = []
    with closing(each_server(CONFIGS.values(), together=True)) as servers:
        for server, (name, flags) in zip(servers, CONFIGS.items()):
            result = drive(server.address, clients, seconds, requests)
            codes = result.pop("codes")
            row = {"config": name, "server_flags": " ".join(flags) or "(defaults)", **result,
                   "resource_exhausted": codes.get("RESOURCE_EXHAUSTED", 0),
                   "failed_otherwise": sum(n for c, n in codes.items()
                                           if c not in ("OK", "RESOURCE_EXHAUSTED"))}
            progress(f"{name}: sent {row['sent']}, answered {row['answered']}, "
                     f"RESOURCE_EXHAUSTED {row['resource_exhausted']}, failed otherwise "
                     f"{row['failed_otherwise']}, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms")
            results.append(row)
    return {"benchmark": "load", "command": f"alignedvq bench load --clients {clients} "
            f"--seconds {seconds:g}",
            "machine": describe(),
            "mix": "3 of 4 requests AlignedVQ indices, 1 of 4 a JPEG-90 upload",
            "results": results}


def table(report: dict) -> str:
    lines = ["| server | sent | answered | RESOURCE_EXHAUSTED | failed otherwise | answers/s | "
             "p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['config']} (`{r['server_flags']}`) | {r['sent']} | {r['answered']} | "
                     f"{r['resource_exhausted']} | {r['failed_otherwise']} | "
                     f"{r['answers_per_s']} | {r['p50_ms']} | {r['p99_ms']} |")
    return "\n".join(lines)


def main(clients: int = 32, seconds: float = 60.0, as_json: bool = False) -> int:
    report = run(clients, seconds, progress=(lambda _: None) if as_json else print)
    print(json.dumps(report) if as_json else table(report))
    return 1 if any(r["failed_otherwise"] for r in report["results"]) else 0
