"""Report section 3: end-to-end latency across an emulated link, split path against the
cloud-only JPEG-90 upload, measured side by side in one run.

The real ``cloud-server`` (a subprocess, inside the cloud namespace) and the edge client library
(a warm worker process, ``alignedvq.benchmarks.latency_client``, inside the edge namespace) talk over the
link of ``alignedvq.benchmarks.netlink``: 20 ms round trip at 1, 10 and 100 Mbit/s. The rate changes
between points; server, worker and gRPC connection stay up, so only requests are timed. Each
request makes every RPC a one-shot ``edge-agent`` question makes (the image mode asks
GetServerInfo before its upload, the feature modes make one call), all inside ``total_ms``; each
point reports its ``rpcs`` per request, as counted on the worker's channel.
"""

from __future__ import annotations

import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading

from alignedvq.benchmarks.netlink import open_link
from alignedvq.evaluation.answers import is_correct
from alignedvq.server_process import ServerProcess
from common.paths import REPO_ROOT

FULL_RATES_MBIT = (1, 10, 100)
ONE_WAY_DELAY_MS = 10.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Worker:
    """An edge worker process speaking JSON lines (``module``: latency_client or, for
    ``alignedvq bench auto``, auto_client)."""

    def __init__(self, wrap, target: str, stderr,
                 module: str = "alignedvq.benchmarks.latency_client", extra: tuple = ()):
        cmd = [*wrap, sys.executable, "-m", module, "--server", target, *extra]
        self.command, self.stderr = " ".join(cmd), stderr
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, text=True, cwd=REPO_ROOT)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def reply(self, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            raise RuntimeError("the edge worker stopped or did not answer in time")
        return json.loads(line)

    def ready(self, timeout: float = 300) -> dict:
        """The worker's first line (it is loaded and connected); a worker that died instead is
        reported with the end of its stderr."""
        try:
            return self.reply(timeout)
        except RuntimeError:
            self.stderr.seek(0)
            raise RuntimeError("edge worker failed:\n" + self.stderr.read()[-3000:]) from None

    def send(self, command: dict, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.reply(timeout)

    def ask(self, repeats: int, timeout: float) -> list[dict]:
        return self.send({"repeats": repeats}, timeout)["results"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _median(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 2)


def summarise(rate: float, results: list[dict]) -> list[dict]:
    points = []
    for mode in dict.fromkeys(r["mode"] for r in results):
        rows = [r for r in results if r["mode"] == mode]
        points.append({"rate_mbit": rate, "mode": mode, "n": len(rows),
                       "total_ms": _median(rows, "total_ms"), "edge_ms": _median(rows, "edge_ms"),
                       "network_ms": _median(rows, "network_ms"),
                       "cloud_ms": _median(rows, "cloud_ms"),
                       "payload_bytes": statistics.median(r["payload_bytes"] for r in rows),
                       "rpcs": max(r["rpcs"] for r in rows),
                       "answer_ms": _median(rows, "answer_ms"),
                       "correct": sum(is_correct(r["answer"], r["expected"]) for r in rows)})
    return points


def run(quick: bool, prefer: str = "auto") -> dict:
    rates = (10,) if quick else FULL_RATES_MBIT
    repeats = 1 if quick else 10
    link, why = open_link(prefer, ONE_WAY_DELAY_MS)
    points, qdiscs = [], {}
    try:
        link.set_rate(rates[0])
        log(f"bench: latency over {link.kind} link")
        with ServerProcess("--host", link.server_host, "--device", "cpu",
                           wrap=link.server_wrap()) as server, \
                tempfile.TemporaryFile("w+") as worker_err:
            # The worker (torch, the edge's weights) loads while the server does; it waits for
            # the server itself. Nothing is timed until both are ready.
            worker = _Worker(link.client_wrap(), link.target(server.address), worker_err)
            try:
                server.wait_ready()
                ready = worker.ready()
                for rate in rates:
                    link.set_rate(rate)
                    qdiscs[rate] = link.qdiscs()
                    results = worker.ask(repeats, timeout=120 + 60 * repeats)
                    for p in summarise(rate, results):
                        log(f"bench: {rate:>5} Mbit/s {p['mode']:<9} total {p['total_ms']:8.1f} "
                            f"ms (edge {p['edge_ms']:.1f}, network {p['network_ms']:.1f}, "
                            f"cloud {p['cloud_ms']:.1f}), {p['payload_bytes']} B, "
                            f"{p['rpcs']} RPC(s)")
                        points.append(p)
            finally:
                worker.close()
    finally:
        description = link.describe()
        link.close()
    by = {(p["rate_mbit"], p["mode"]): p for p in points}
    rpcs = {p["mode"]: p["rpcs"] for p in points}
    speedup = {str(r): round(by[r, "image"]["total_ms"] / by[r, "alignedvq"]["total_ms"], 2)
               for r in rates if (r, "image") in by and (r, "alignedvq") in by}
    return {"link": {"kind": link.kind, "description": description, "fallback_reason": why,
                     "one_way_delay_ms": ONE_WAY_DELAY_MS, "rtt_ms": 2 * ONE_WAY_DELAY_MS,
                     "tc_qdiscs": {str(k): v for k, v in qdiscs.items()}},
            "rates_mbit": list(rates), "repeats": repeats, "statistic": "median",
            "worker": {"torch_threads": ready.get("torch_threads"),
                       "command": worker.command},
            "requests": "the 8 sample questions of common/models/samples/questions.jsonl, in turn, "
                        "each with the RPCs a one-shot edge-agent makes, all timed (" +
                        ", ".join(f"{mode}: {n}" for mode, n in rpcs.items()) + " RPC(s) per "
                        "request)",
            "rpcs_per_request": rpcs,
            "points": points, "speedup_image_over_alignedvq": speedup}
