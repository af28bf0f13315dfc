"""``alignedvq export-edge``: the edge half (vision blocks before the cut + the AlignedVQ encoder)
as one ONNX graph, from the processor's normalised pixels to codebook indices, plus its sidecar
(edge_agent/edge_spec.py). The graph is checked against the torch edge before the export counts.

The modules come from the project's own split (``EdgeHalf`` -> ``EdgeVision`` reads the vision
tensors by key), so the graph holds exactly the weights the torch edge runs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.codec.aligned_vq import AlignedVQ
from common.split.vision import EdgeVision
from edge_agent.edge_spec import GRAPH_FILE, INPUT_NAME, OUTPUT_NAME, EdgeSpec, Preprocess

OPSET = 18
# A mismatch counts as a near-tie when, at the first stage where the two runtimes chose
# different codewords, the two codewords' squared distances to the residual differ by at most
# this fraction: float rounding in a different kernel order can flip such a choice, nothing else
# should.
NEAR_TIE_RELATIVE = 1e-3
# Graphs above this size keep their weights in a side file (protobuf caps one file at 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30


class EdgeExportError(RuntimeError):
    """The exported graph does not reproduce the torch edge."""


class EdgeEncoderGraph(nn.Module):
    """Pixels (B, 3, H, W) -> indices (B, T, stages) int64: what the exported graph computes."""

    def __init__(self, vision: EdgeVision, codec: AlignedVQ):
        super().__init__()
        self.vision, self.codec = vision, codec

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.codec.quantize(self.codec.project(self.vision(pixel_values)))[0]


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_graph(vision: EdgeVision, codec: AlignedVQ, path: Path, image_size: int) -> dict:
    """torch.onnx.export (the dynamo exporter; the TorchScript one is deprecated in torch 2.9+)
    with a dynamic batch axis. Returns what the sidecar records about the exporter."""
    graph = EdgeEncoderGraph(vision.float().eval(), codec.float().eval()).eval()
    example = torch.zeros(2, 3, image_size, image_size)
    external = _param_bytes(graph) > EXTERNAL_DATA_BYTES
    with torch.no_grad():
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=True,
                          external_data=external, verbose=False,
                          dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}})
    return {"torch": torch.__version__, "exporter": "torch.onnx.export(dynamo=True)",
            "opset": OPSET, "external_data": external}


def ort_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def near_tie_report(codec: AlignedVQ, features: torch.Tensor, torch_idx: np.ndarray,
                    onnx_idx: np.ndarray) -> dict:
    """Compare the two runtimes' indices token by token. A token that differs is excused only if
    its first differing stage is a near-tie on the torch side's residual; later stages of that
    token follow from the different choice and are not judged separately."""
    with torch.no_grad():
        return _near_tie_report(codec, features, torch_idx, onnx_idx)


def _near_tie_report(codec, features, torch_idx, onnx_idx) -> dict:
    z = codec.project(features).reshape(-1, codec.config.code_dim)
    t = torch_idx.reshape(z.shape[0], -1)
    o = onnx_idx.reshape(z.shape[0], -1)
    differing = np.nonzero((t != o).any(-1))[0]
    near_ties, worst = 0, 0.0
    for row in differing:
        residual = z[row].clone()
        for s, book in enumerate(codec.codebooks):
            a, b = int(t[row, s]), int(o[row, s])
            if a != b:
                da = float((residual - book[a]).pow(2).sum())
                db = float((residual - book[b]).pow(2).sum())
                gap = abs(db - da) / max(da, db, 1e-12)
                worst = max(worst, gap)
                near_ties += gap <= NEAR_TIE_RELATIVE
                break
            residual = residual - book[a]
    return {"tokens": int(t.shape[0]), "indices": int(t.size),
            "index_match_rate": float((t == o).mean()),
            "differing_tokens": int(len(differing)), "near_ties": int(near_ties),
            "worst_relative_gap": worst}


def validate(vision: EdgeVision, codec: AlignedVQ, graph_path: Path,
             pixels: np.ndarray) -> dict:
    """Run the torch edge and the ONNX graph on the same pixels, whole batch and one by one
    (the batch axis is dynamic); raise EdgeExportError unless every difference is a near-tie."""
    session = ort_session(graph_path)
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        features = vision(x).float()
        torch_idx = codec.quantize(codec.project(features))[0].numpy()
    onnx_idx = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
    singles = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i:i + 1]})[0]
                              for i in range(len(pixels))])
    if onnx_idx.shape != torch_idx.shape:
        raise EdgeExportError(f"the graph returns indices of shape {onnx_idx.shape}, the torch "
                              f"edge {torch_idx.shape}")
    report = near_tie_report(codec, features, torch_idx, onnx_idx)
    report["images"] = int(len(pixels))
    report["batch_of_one_equals_batch"] = bool(np.array_equal(singles, onnx_idx))
    if report["near_ties"] != report["differing_tokens"]:
        raise EdgeExportError(
            f"the ONNX graph disagrees with the torch edge on {report['differing_tokens']} of "
            f"{report['tokens']} tokens, {report['differing_tokens'] - report['near_ties']} of "
            f"them not near-ties (worst relative distance gap {report['worst_relative_gap']:.2e})")
    return report


def int8_graph(vision: EdgeVision, codec: AlignedVQ, float_graph: Path, pixels: np.ndarray,
               allow_below_threshold: bool = False) -> tuple[Path, dict]:
    """The validated float graph with int8 weights, next to it in ``int8/``, and what the
    sidecar records about it; AgreementBelowThreshold unless its indices agree with the torch
    edge's on enough tokens of ``pixels`` (or ``allow_below_threshold``)."""
    from alignedvq.edge_quantize import (agreement, check_agreement, graph_indices,
                                         quantize_graph, torch_indices)

    graph = float_graph.parent / "int8" / GRAPH_FILE
    graph.parent.mkdir()
    settings = quantize_graph(float_graph, graph)
    report = agreement(torch_indices(vision, codec, pixels), graph_indices(graph, pixels))
    return graph, settings | {"agreement": check_agreement(report, allow_below_threshold)}


def write_edge(vision: EdgeVision, codec: AlignedVQ, preprocess: Preprocess, out_dir: Path,
               pixels: np.ndarray, codec_fingerprint: str, model_id: str = "",
               weights: str = "float32", agreement_pixels: np.ndarray | None = None,
               allow_below_threshold: bool = False) -> EdgeSpec:
    """Export, validate on ``pixels`` and write ``edge.onnx`` + ``edge.json`` into ``out_dir``;
    ``weights="int8"`` then quantises the validated graph and measures its agreement on
    ``agreement_pixels`` (default: ``pixels``). Nothing is left in ``out_dir`` unless
    validation (and for int8 the agreement check) passed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_size = vision.embeddings.image_size
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        graph = Path(tmp) / GRAPH_FILE
        exporter = export_graph(vision, codec, graph, image_size)
        report = validate(vision, codec, graph, pixels)
        quantization = {}
        if weights == "int8":
            graph, quantization = int8_graph(
                vision, codec, graph, pixels if agreement_pixels is None else agreement_pixels,
                allow_below_threshold)
        for f in graph.parent.iterdir():
            if f.is_file():
                os.replace(f, out_dir / f.name)
    cfg = codec.config
    spec = EdgeSpec(preprocess=preprocess, image_size=image_size, tokens=cfg.coded_tokens,
                    bits=cfg.bits, stages=cfg.stages, codebook_size=cfg.codebook_size,
                    split_layer=cfg.split_layer, vision_fingerprint=vision.fingerprint,
                    codec_fingerprint=codec_fingerprint, model_id=model_id,
                    exporter=exporter, validation=report, weights=weights,
                    quantization=quantization)
    spec.save(out_dir)
    return spec


def validation_images(image_size: int, seed: int = 0) -> list:
    """The shipped sample images, plus random-noise images of odd sizes (resize and crop paths
    that the samples, already at the model's size, do not take)."""
    from PIL import Image

    from common.imaging.policy import open_image
    from common.paths import SAMPLES_DIR

    images = [open_image(p) for p in sorted((SAMPLES_DIR / "images").iterdir())]
    rng = np.random.default_rng(seed)
    for w, h in ((image_size * 3 // 2, image_size), (image_size - 7, image_size * 2)):
        images.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return images


def export_edge(model_dir: Path, codec_dir: Path, out_dir: Path,
                split_layer: int | None = None, weights: str = "float32",
                agreement_scenes: int | None = None,
                allow_below_threshold: bool = False) -> EdgeSpec:
    """The CLI's export: a checkpoint folder and a codec folder in, the edge graph out. The
    pixels come from the model's own image processor, and the Pillow+numpy preprocessing the
    ONNX edge uses instead is checked against it on the same images."""
    from edge_agent.clip_preprocess import preprocess
    from edge_agent.torch_edge import EdgeHalf

    edge = EdgeHalf(model_dir, codec_dir, "alignedvq", split_layer)
    config_path = Path(model_dir) / "processor_config.json"
    if not config_path.is_file():
        config_path = Path(model_dir) / "preprocessor_config.json"
    cfg = json.loads(config_path.read_text())
    pre = Preprocess.from_processor_config(cfg.get("image_processor", cfg))
    images = validation_images(edge.vision.embeddings.image_size)
    reference = edge.image_processor(images=images, return_tensors="np").pixel_values
    ours = preprocess(images, pre)
    if not np.array_equal(reference, ours):
        raise EdgeExportError(
            f"the Pillow+numpy preprocessing differs from the model's image processor "
            f"({type(edge.image_processor).__name__}) by up to "
            f"{float(np.abs(reference - ours).max()):.3g}; only CLIP's PIL processor is supported")
    agreement_pixels = None
    if weights == "int8":
        from alignedvq.edge_quantize import AGREEMENT_SCENES, agreement_images

        scenes = AGREEMENT_SCENES if agreement_scenes is None else agreement_scenes
        agreement_pixels = edge.image_processor(
            images=agreement_images(edge.vision.embeddings.image_size, scenes),
            return_tensors="np").pixel_values.astype(np.float32)
    return write_edge(edge.vision, edge.codec, pre, out_dir, reference.astype(np.float32),
                      edge.codec_fingerprint, model_id=Path(model_dir).name, weights=weights,
                      agreement_pixels=agreement_pixels,
                      allow_below_threshold=allow_below_threshold)
