"""``alignedvq export-edge --weights int8``: the exported float32 edge graph with int8 weights
(ONNX Runtime's dynamic quantisation), offered only where its indices agree with the float32
torch edge on at least ``AGREEMENT_THRESHOLD`` of the tokens.

What is quantised, and why (docs/benchmarks/edge_int8.md has the numbers): only the MatMuls of
the vision blocks (q/k/v, out_proj, fc1, fc2), weights int8 per output channel. The codec's
down-projection, its distance MatMul and the argmin stay float32, and so does the patch
embedding's Conv: quantising them cost agreement and saved nothing measurable. Dynamic
quantisation also quantises each MatMul's input to uint8 with a scale computed from the whole
batch at run time, so an int8 graph's indices depend on what else is in the batch; agreement is
therefore measured one image per run, as ``edge-agent`` sends them."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from alignedvq.edge_export import EdgeExportError, ort_session, validation_images
from common.codec.aligned_vq import AlignedVQ
from common.split.vision import EdgeVision
from edge_agent.edge_spec import INPUT_NAME, OUTPUT_NAME

WEIGHTS = ("float32", "int8")
# The rule: an int8 graph is offered only where at least this fraction of tokens (all
# stages equal) matches the float32 torch edge.
AGREEMENT_THRESHOLD = 0.99
# ShapesVQA scenes added to the export's check images: 6 images (384 tokens on the embedded
# model) cannot tell 99 % from 98 %; 64 more give 4,480 tokens.
AGREEMENT_SCENES = 64
# The dynamo exporter records each node's module path here (a Python list literal).
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
VISION_BLOCKS = "vision.layers."


class AgreementBelowThreshold(EdgeExportError):
    """The int8 graph's indices differ from the float32 edge's on too many tokens."""


def vision_block_matmuls(graph_path: Path) -> list[str]:
    """Names of the MatMul nodes inside the vision blocks whose second input is a weight."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and node.input[1] in weights
            and any(p.key == NAME_SCOPES and VISION_BLOCKS in p.value
                    for p in node.metadata_props)]


def quantize_graph(float_graph: Path, int8_graph: Path) -> dict:
    """Write ``int8_graph`` from ``float_graph``; returns the settings the sidecar records."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = vision_block_matmuls(float_graph)
    if not nodes:
        raise AgreementBelowThreshold(f"found no vision-block MatMul to quantise in "
                                      f"{float_graph} (was it exported by this version?)")
    # The quantiser logs (root logger) a suggestion to run its pre-processing first: tried, it
    # drops the name scopes the node selection reads and lowered agreement (edge_int8.md).
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(float_graph), str(int8_graph), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul"],
                         nodes_to_quantize=nodes)
    finally:
        root.setLevel(level)
    return {"tool": f"onnxruntime.quantization.quantize_dynamic ({onnxruntime.__version__})",
            "weight_type": "int8", "per_channel": True, "activations": "uint8, dynamic",
            "quantized_nodes": len(nodes),
            "kept_float32": "patch embedding, codec (down-projection, distances, argmin)"}


def agreement_images(image_size: int, scenes: int = AGREEMENT_SCENES, seed: int = 0) -> list:
    """The export's check images plus ``scenes`` ShapesVQA scenes (the embedded model's task)."""
    from alignedvq.data.shapes_vqa import render, sample_scene

    rng = random.Random(seed)
    return validation_images(image_size) + [render(sample_scene(rng)) for _ in range(scenes)]


def torch_indices(vision: EdgeVision, codec: AlignedVQ, pixels: np.ndarray,
                  batch: int = 8) -> np.ndarray:
    """The float32 torch edge's indices, a few images at a time (the 7B geometry's attention
    would need gigabytes for a large batch)."""
    with torch.no_grad():
        return np.concatenate([codec.encode(vision(torch.from_numpy(pixels[i:i + batch])).float())
                               .numpy() for i in range(0, len(pixels), batch)])


def graph_indices(graph_path: Path, pixels: np.ndarray, threads: int = 0) -> np.ndarray:
    """The graph's indices, one image per run (as edge-agent sends them)."""
    session = ort_session(graph_path, threads)
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i:i + 1]})[0]
                           for i in range(len(pixels))])


def agreement(reference: np.ndarray, indices: np.ndarray) -> dict:
    """Token agreement (every stage of a token equal) of ``indices`` with ``reference``."""
    tokens = reference.reshape(-1, reference.shape[-1])
    same = (tokens == indices.reshape(tokens.shape)).all(-1)
    return {"images": int(reference.shape[0]), "tokens": int(same.size),
            "token_agreement": float(same.mean()), "differing_tokens": int((~same).sum()),
            "threshold": AGREEMENT_THRESHOLD}


def check_agreement(report: dict, allow_below_threshold: bool = False) -> dict:
    """Raise AgreementBelowThreshold unless the agreement passes or the caller forces it; the
    returned report records which."""
    passed = report["token_agreement"] >= AGREEMENT_THRESHOLD
    if not passed and not allow_below_threshold:
        raise AgreementBelowThreshold(
            f"--weights int8 refused: the int8 graph's indices agree with the float32 torch edge "
            f"on {report['token_agreement']:.2%} of {report['tokens']} tokens "
            f"({report['images']} images), below the {AGREEMENT_THRESHOLD:.0%} threshold; "
            f"nothing was written (export with --weights float32, or add "
            f"--allow-below-threshold to write it anyway for measurement)")
    return report | {"passed": passed, "forced": not passed}
