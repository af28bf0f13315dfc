"""``alignedvq bench edge``: the edge half on eager PyTorch against the exported ONNX graph on
ONNX Runtime, side by side in one run on this machine.

* edge compute (median of ``repeats`` after warm-up, batch 1, the same threads for both):
  pixels -> indices for the embedded model and for llava-1.5-7b's edge geometry (CLIP
  ViT-L/14-336 to layer 23 of 24 + a 12-bit codec, random weights, exported and validated the
  same way as a real checkpoint); for the embedded model also image -> packed chunks, the
  preprocessing included (the HF processor for torch, Pillow+numpy for ONNX);
* ``edge-agent`` processes against a real cloud-server (embedded model): wall time of one
  question, start-up (wall time minus the request's own total), and peak resident memory
  (the child's ru_maxrss from wait4), the median over ``agent_runs`` runs per runtime."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR


def _interleaved_median_ms(a, b, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` timed alternately, so a shared machine's load varies for both
    alike (this CPU is shared; sequential blocks would hand one side the quiet minutes)."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ta), statistics.median(tb)


def _graph_times(vision, codec, edge_dir: Path, pixels: np.ndarray, repeats: int,
                 threads: int) -> dict:
    from alignedvq.edge_export import EdgeEncoderGraph, ort_session

    graph = EdgeEncoderGraph(vision, codec).eval()
    x = torch.from_numpy(pixels)
    session = ort_session(edge_dir / "edge.onnx", threads)

    def eager():
        with torch.inference_mode():
            return graph(x)

    torch_ms, onnx_ms = _interleaved_median_ms(
        eager, lambda: session.run(["indices"], {"pixel_values": pixels}), repeats)
    same = float((eager().numpy() == session.run(["indices"], {"pixel_values": pixels})[0])
                 .mean())
    return {"torch_ms": round(torch_ms, 2), "onnx_ms": round(onnx_ms, 2),
            "speedup": round(torch_ms / onnx_ms, 2), "index_match_rate": same}


def tiny_compute(edge_dir: Path, repeats: int, threads: int) -> dict:
    from common.imaging.policy import open_image
    from edge_agent.clip_preprocess import preprocess
    from edge_agent.onnx_edge import OnnxEdge
    from edge_agent.torch_edge import EdgeHalf

    edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)
    onnx = OnnxEdge(edge_dir, threads)
    image = open_image(SAMPLES_DIR / "images" / "sample0.png")
    result = _graph_times(edge.vision, edge.codec, edge_dir,
                          preprocess([image], onnx.spec.preprocess), repeats, threads)
    with torch.inference_mode():
        chunks_torch, chunks_onnx = _interleaved_median_ms(lambda: edge.chunks([image]),
                                                           lambda: onnx.chunks([image]), repeats)
    result |= {"image_to_chunks_torch_ms": round(chunks_torch, 2),
               "image_to_chunks_onnx_ms": round(chunks_onnx, 2)}
    return result


def geometry_compute(repeats: int, threads: int, shrink: bool = False) -> dict:
    from PIL import Image

    from alignedvq.benchmarks.edge_geometry import geometry_edge
    from alignedvq.edge_export import write_edge
    from edge_agent.clip_preprocess import preprocess

    vision, codec, pre = geometry_edge(shrink)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (400, 500, 3), dtype=np.uint8))
              for _ in range(2)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        spec = write_edge(vision, codec, pre, Path(tmp), preprocess(images, pre), "0" * 16,
                          model_id="llava-1.5-7b-geometry")
        export_s = time.perf_counter() - t0
        graph_mb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e6
        result = _graph_times(vision, codec, Path(tmp), preprocess(images[:1], pre), repeats,
                              threads)
    return result | {"export_and_validate_s": round(export_s, 1), "graph_mb": round(graph_mb, 1),
                     "tokens": spec.tokens, "validation_index_match_rate":
                     spec.validation["index_match_rate"]}


# Linux counts a forked child's memory before exec in its ru_maxrss, so a child of this (large)
# process would report this process's size. A small launcher forks the agent instead and
# reports the agent's own peak (wait4) and wall time.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
out = p.stdout.read()
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"wall_s": time.perf_counter() - t0, "rc": os.waitstatus_to_exitcode(status),
                  "peak_rss_kb": usage.ru_maxrss, "stdout": out}))
"""


def _agent_run(cmd: list[str]) -> dict:
    launched = json.loads(subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], check=True,
                                         capture_output=True, text=True).stdout)
    if launched["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {launched['rc']}")
    result = json.loads(launched["stdout"])
    wall = launched["wall_s"]
    return {"wall_s": wall, "startup_s": wall - result["total_ms"] / 1000,
            "peak_rss_mb": launched["peak_rss_kb"] / 1024, "answer": result["answer"]}


def agent_processes(edge_dir: Path, runs: int) -> dict:
    from alignedvq.server_process import ServerProcess

    exe = Path(sys.executable).parent / "edge-agent"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_agent.cli"]
    out = {}
    with ServerProcess() as server:
        server.wait_ready()
        for runtime in ("torch", "onnx"):
            cmd = [*base, "--server", server.address, "--runtime", runtime, "--onnx-dir",
                   str(edge_dir), "--image", str(SAMPLES_DIR / "images" / "sample0.png"),
                   "--question", "what shape is the purple object?", "--json", "--mode",
                   "alignedvq"]
            samples = [_agent_run(cmd) for _ in range(runs)]
            out[runtime] = {k: round(statistics.median(s[k] for s in samples), 3)
                            for k in ("wall_s", "startup_s", "peak_rss_mb")}
            out[runtime]["answer"] = samples[0]["answer"]
        server.terminate()
    return out


def _progress(name: str, section: dict) -> dict:
    """Each section as it completes, on stderr: the 7B part takes minutes on a small CPU."""
    print(f"[bench edge] {name}: {json.dumps(section)}", file=sys.stderr, flush=True)
    return section


def main(repeats: int = 20, agent_runs: int = 5, include_7b: bool = True, threads: int = 0,
         as_json: bool = False, edge_dir: str | None = None) -> int:
    from alignedvq.edge_export import export_edge

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    report = {"machine": {"cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(edge_dir) if edge_dir else Path(tmp)
        if not edge_dir:
            export_edge(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, directory)
        report["tiny"] = _progress("tiny", tiny_compute(directory, repeats, threads))
        report["agent"] = _progress("agent", agent_processes(directory, agent_runs))
    if include_7b:
        report["7b_geometry"] = _progress("7b_geometry", geometry_compute(repeats, threads))
    import onnxruntime

    report["machine"]["onnxruntime"] = onnxruntime.__version__
    if as_json:
        print(json.dumps(report))
        return 0
    print(f"edge half, torch {torch.__version__} eager vs onnxruntime {onnxruntime.__version__}, "
          f"{threads} thread(s), median of {repeats}, batch 1")
    print("| model | torch ms | ONNX Runtime ms | speed-up |")
    print("|---|---:|---:|---:|")
    rows = [("embedded (pixels -> indices)", report["tiny"]["torch_ms"],
             report["tiny"]["onnx_ms"]),
            ("embedded (image -> packed chunks)", report["tiny"]["image_to_chunks_torch_ms"],
             report["tiny"]["image_to_chunks_onnx_ms"])]
    if include_7b:
        g = report["7b_geometry"]
        rows.append(("llava-1.5-7b geometry (pixels -> indices)", g["torch_ms"], g["onnx_ms"]))
    for name, t, o in rows:
        print(f"| {name} | {t:.1f} | {o:.1f} | {t / o:.2f}x |")
    print(f"\nedge-agent, one question on the embedded model, median of {agent_runs} runs "
          f"(start-up = wall time minus the request's own total)")
    print("| runtime | wall s | start-up s | peak RSS MB |")
    print("|---|---:|---:|---:|")
    for runtime, r in report["agent"].items():
        print(f"| {runtime} | {r['wall_s']:.2f} | {r['startup_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    if include_7b:
        g = report["7b_geometry"]
        print(f"\n7B geometry graph: {g['tokens']} tokens, {g['graph_mb']:.0f} MB, exported and "
              f"validated in {g['export_and_validate_s']:.0f} s")
    return 0
