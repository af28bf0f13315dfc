"""``python -m alignedvq.benchmarks.edge_int8``: the exported edge graph with float32 weights
against the same graph with int8 weights (what ``export-edge --weights int8`` writes), side by
side in one run, for the embedded model and for llava-1.5-7b's edge geometry (random weights,
alignedvq/benchmarks/edge_geometry.py).

Per geometry: graph latency (batch 1, median of ``repeats`` runs timed alternately, ``threads``
intra-op threads), the graph files' size, and token agreement with the float32 torch edge (every
stage of a token equal; each graph run one image at a time, as edge-agent sends them). The
float32 graph's own agreement is the control: it must be 100 %, so any difference is the
quantisation's. ``--nbits`` adds ONNX Runtime's weight-only 8-bit MatMulNBits (float
activations), which export-edge does not offer (docs/benchmarks/edge_int8.md says why)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from alignedvq.benchmarks.edge_runtime import _interleaved_median_ms
from alignedvq.edge_quantize import (AGREEMENT_THRESHOLD, agreement, agreement_images,
                                     graph_indices, quantize_graph, torch_indices,
                                     vision_block_matmuls)
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR
from edge_agent.edge_spec import GRAPH_FILE, INPUT_NAME, OUTPUT_NAME

TINY_SCENES = 200   # 206 images, 13,184 tokens: the agreement to about +-0.3 points
GEOMETRY_SCENES = 0  # the 6 check images, 3,456 tokens: seconds per image on one thread


def _size_mb(graph: Path) -> float:
    """The graph and its external-data file, if any."""
    return round(sum(f.stat().st_size for f in graph.parent.iterdir() if f.is_file()) / 1e6, 1)


def nbits_graph(float_graph: Path, out_graph: Path) -> None:
    """Weight-only int8 (MatMulNBits, blocks of 32, activations stay float32) on the same
    vision-block MatMuls: the alternative that was measured and not offered."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    keep = set(vision_block_matmuls(float_graph))
    model = onnx.load(str(float_graph))
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in keep]
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True,
                                     nodes_to_exclude=others)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out_graph), use_external_data_format=False)


def compare_graphs(vision, codec, float_graph: Path, pixels: np.ndarray, repeats: int,
                   threads: int, with_nbits: bool) -> dict:
    """float32 against int8 (and optionally MatMulNBits) for one geometry."""
    from alignedvq.edge_export import ort_session

    reference = torch_indices(vision, codec, pixels)
    work = float_graph.parent.parent
    graphs = {"float32": float_graph}
    t0 = time.perf_counter()
    (work / "int8").mkdir()
    graphs["int8"] = work / "int8" / GRAPH_FILE
    settings = quantize_graph(float_graph, graphs["int8"])
    quantize_s = time.perf_counter() - t0
    if with_nbits:
        (work / "nbits8").mkdir()
        graphs["nbits8"] = work / "nbits8" / GRAPH_FILE
        nbits_graph(float_graph, graphs["nbits8"])
    rows = {name: {"graph_mb": _size_mb(path),
                   **agreement(reference, graph_indices(path, pixels, threads))}
            for name, path in graphs.items()}
    one = pixels[:1]
    float_session = ort_session(float_graph, threads)
    for name in graphs.keys() - {"float32"}:
        session = ort_session(graphs[name], threads)
        float_ms, ms = _interleaved_median_ms(
            lambda: float_session.run([OUTPUT_NAME], {INPUT_NAME: one}),
            lambda s=session: s.run([OUTPUT_NAME], {INPUT_NAME: one}), repeats, warmup=1)
        rows[name]["ms"] = round(ms, 2)
        rows[name]["float32_ms_alongside"] = round(float_ms, 2)
        rows[name]["speedup"] = round(float_ms / ms, 2)
    rows["float32"]["ms"] = rows["int8"]["float32_ms_alongside"]
    return {"graphs": rows, "int8_settings": settings, "quantize_s": round(quantize_s, 1),
            "offered": rows["int8"]["token_agreement"] >= AGREEMENT_THRESHOLD}


def tiny(repeats: int, threads: int, scenes: int, with_nbits: bool) -> dict:
    from alignedvq.edge_export import export_edge
    from edge_agent.clip_preprocess import preprocess
    from edge_agent.torch_edge import EdgeHalf

    edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        spec = export_edge(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, Path(tmp) / "float32")
        pixels = preprocess(agreement_images(spec.image_size, scenes), spec.preprocess)
        return compare_graphs(edge.vision, edge.codec, Path(tmp) / "float32" / GRAPH_FILE,
                              pixels, repeats, threads, with_nbits) | {"tokens_per_image":
                                                                       spec.tokens}


def geometry(repeats: int, threads: int, scenes: int, with_nbits: bool) -> dict:
    from alignedvq.benchmarks.edge_geometry import geometry_edge
    from alignedvq.edge_export import write_edge
    from edge_agent.clip_preprocess import preprocess

    vision, codec, pre = geometry_edge()
    images = agreement_images(vision.embeddings.image_size, scenes)
    pixels = preprocess(images, pre)
    with tempfile.TemporaryDirectory() as tmp:
        # Validated on two images (as `bench edge` does): the float export's own check.
        spec = write_edge(vision, codec, pre, Path(tmp) / "float32", pixels[:2], "0" * 16,
                          model_id="llava-1.5-7b-geometry")
        return compare_graphs(vision, codec, Path(tmp) / "float32" / GRAPH_FILE, pixels,
                              repeats, threads, with_nbits) | {"tokens_per_image": spec.tokens}


def _progress(name: str, section: dict) -> dict:
    print(f"[edge_int8] {name}: {json.dumps(section)}", file=sys.stderr, flush=True)
    return section


def table(report: dict) -> str:
    lines = ["| geometry | graph | ms (batch 1) | speed-up | size MB | tokens agree | offered |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, section in report["geometries"].items():
        for graph, r in section["graphs"].items():
            offered = "" if graph == "float32" else (
                ("**yes**" if section["offered"] else "no") if graph == "int8" else "not offered")
            lines.append(f"| {name} | {graph} | {r['ms']:.1f} | {r.get('speedup', 1.0):.2f}x | "
                         f"{r['graph_mb']:.1f} | {r['token_agreement']:.2%} of {r['tokens']} | "
                         f"{offered} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from alignedvq.benchmarks.machine import describe, line

    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.edge_int8",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    p.add_argument("--repeats", type=int, default=50, help="timed runs, embedded model")
    p.add_argument("--repeats-7b", type=int, default=5, help="timed runs, 7B geometry")
    p.add_argument("--scenes", type=int, default=TINY_SCENES,
                   help="ShapesVQA scenes added to the check images, embedded model")
    p.add_argument("--scenes-7b", type=int, default=GEOMETRY_SCENES,
                   help="the same for the 7B geometry")
    p.add_argument("--no-7b", action="store_true", help="skip the 7B geometry")
    p.add_argument("--nbits", action="store_true",
                   help="also weight-only 8-bit MatMulNBits (not offered by export-edge)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    report = {"machine": describe() | {"onnxruntime": onnxruntime.__version__},
              "threshold": AGREEMENT_THRESHOLD, "geometries": {}}
    report["geometries"]["embedded model"] = _progress("tiny", tiny(
        args.repeats, args.threads, args.scenes, args.nbits))
    if not args.no_7b:
        report["geometries"]["llava-1.5-7b geometry"] = _progress("7b", geometry(
            args.repeats_7b, args.threads, args.scenes_7b, args.nbits))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{line(report['machine'])}, onnxruntime {onnxruntime.__version__}, "
          f"{args.threads} thread(s)\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
