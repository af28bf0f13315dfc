"""``alignedvq bench auto``'s 7B part: llava-1.5-7b's geometry (CLIP ViT-L/14-336, random weights,
an untrained 12-bit codec: timings only), assembled from measured parts because this machine can
run neither a 7B language model nor a GPU:

* the edge's compute, measured here on one torch thread: the upload's JPEG-90 encoding of a
  real photograph (scikit-image's samples, made the 336-px square the model sees), or for
  ``codes@K`` CLIP's preprocessing + the embeddings and blocks [0, K) + the codec's encode and
  packing (:func:`edge_compute`);
* the network's time, measured by requests of exactly each path's size sent through the shaped
  link to the running tiny server's ``ProbeLink`` (no model work; ``auto_client``'s ``probe``);
* the server's compute, excluded: on a GPU the cloud's remaining vision blocks and the prefill
  take milliseconds and are nearly the same for every path (only the blocks the cloud runs
  differ), and generation is the same for all.

:func:`compose` adds the parts sample by sample, lets a :class:`LatencyModel` fed the measured
profile and the probe choose (per request: each photo's upload size), and names the oracle.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from alignedvq.benchmarks.stats import percentiles
from edge_agent.latency_model import Link, LatencyModel, Path

QUESTION = "What is shown in this image?"


def _photos(size: int):
    from alignedvq.benchmarks.payload_bytes import sample_photos
    from common.imaging.policy import model_square

    return {name: model_square(im, size) for name, im in sample_photos().items()}


def codes_request_bytes(codec, tokens: int, vision_fp: str) -> int:
    """An AnswerFromCodes stream of this geometry (zero bytes stand in for the indices: the
    same size), as edge_agent.auto.EdgeCodec.request_bytes counts it."""
    from alignedvq.v1 import inference_pb2 as pb
    from common.wire.messages import codes_request_messages

    cfg = codec.config
    chunk = bytes(-(-tokens * cfg.bits // 8))
    return sum(m.ByteSize() for m in codes_request_messages(
        pb.FEATURE_ENCODING_ALIGNEDVQ, tokens, cfg.bits, cfg.stages, [chunk] * cfg.stages,
        vision_fp, codec.fingerprint(), QUESTION))


def edge_compute(repeats: int, late_repeats: int, shrink: bool = False) -> dict:
    """Per path: its edge compute samples (ms) and request sizes (bytes). ``late_repeats``
    for the cut at the feature layer (23 blocks, seconds a run on one thread)."""
    import torch

    from alignedvq.benchmarks.edge_geometry import geometry_edge
    from alignedvq.v1 import inference_pb2 as pb
    from common.codec.encodings import make_encoding
    from common.imaging.policy import jpeg_baseline
    from edge_agent.clip_preprocess import preprocess

    vision, codec, pre = geometry_edge(shrink)
    feature_layer = vision.split.feature_layer
    photos = _photos(pre.crop_height)
    names = list(photos)
    out = {"photos": names, "feature_layer": feature_layer, "paths": {}}

    jpegs = [jpeg_baseline(photos[n], pre.crop_height, 90) for n in names]
    jpeg_ms = []
    for k in range(repeats + 1):          # the first is a warm-up
        im = photos[names[k % len(names)]]
        t = time.perf_counter()
        jpeg_baseline(im, pre.crop_height, 90)
        if k:
            jpeg_ms.append((time.perf_counter() - t) * 1000)
    out["paths"]["image"] = {"edge_ms": jpeg_ms, "request_bytes": [
        pb.AnswerFromImageRequest(image=j, question=QUESTION).ByteSize() for j in jpegs]}

    for layer, n in ((1, repeats), (feature_layer, late_repeats)):
        vision, codec, pre = geometry_edge(shrink, split_layer=layer)
        tokens = codec.config.tokens   # 577 at split 1 (CLS crosses too), 576 at 23
        encoding = make_encoding("alignedvq", codec, tokens, codec.config.feature_dim)
        times = []
        with torch.inference_mode():
            for k in range(n + 1):
                im = photos[names[k % len(names)]]
                t = time.perf_counter()
                encoding.encode_batch(vision(torch.from_numpy(preprocess([im], pre))))
                if k:
                    times.append((time.perf_counter() - t) * 1000)
        out["paths"][f"codes@{layer}"] = {
            "edge_ms": times, "tokens": tokens, "bits": codec.config.bits,
            "request_bytes": [codes_request_bytes(codec, tokens, vision.fingerprint)]}
    return out


def compose(edge: dict, network: dict) -> dict:
    """One condition: each path's latency samples (edge sample ``i % n`` + network sample
    ``i``, the same photo's for the upload), the chooser's pick per request and the oracle."""
    paths = list(edge["paths"])
    n = len(network["network_ms"]["image"])
    samples = {}
    for path in paths:
        e = edge["paths"][path]["edge_ms"]
        samples[path] = [e[i % len(e)] + network["network_ms"][path][i] for i in range(n)]
    link = network["link"]
    model = LatencyModel(Link(link["rtt_ms"], link["kbit_per_s"], stale=False),
                         {p: statistics.median(edge["paths"][p]["edge_ms"]) for p in paths})
    # The server's time is excluded (the module's docstring): 0 for every path.
    picks, auto = [], []
    for i in range(n):
        payloads = {Path.parse(p): _size(edge, p, i) for p in paths}
        chosen, _ = model.choose(payloads)
        picks.append(chosen.path.name)
        auto.append(samples[chosen.path.name][i])
    rows = {p: percentiles(samples[p]) | {"samples_ms": [round(x, 2) for x in samples[p]]}
            for p in paths}
    rows["auto"] = percentiles(auto) | {"samples_ms": [round(x, 2) for x in auto]}
    oracle = min(paths, key=lambda p: rows[p]["p50"])
    best_p95 = min(rows[p]["p95"] for p in paths)
    return {"paths": rows, "auto_picks": {p: picks.count(p) for p in dict.fromkeys(picks)},
            "link_probed": link, "oracle": oracle,
            "auto_over_oracle_p50": round(rows["auto"]["p50"] / rows[oracle]["p50"], 3),
            "auto_over_best_p95": round(rows["auto"]["p95"] / best_p95, 3),
            "upload_over_early_split_p50": round(rows["image"]["p50"] / rows["codes@1"]["p50"], 2)}


def _size(edge: dict, path: str, i: int) -> int:
    sizes = edge["paths"][path]["request_bytes"]
    return sizes[i % len(sizes)]


def probe_sizes(edge: dict) -> dict[str, list[int]]:
    return {p: v["request_bytes"] for p, v in edge["paths"].items()}


def summary(edge: dict) -> dict:
    """The measured edge profile, for the report."""
    return {p: {"request_bytes": v["request_bytes"], "edge_ms_p50": round(float(np.median(v["edge_ms"])), 2), "n": len(v["edge_ms"]),
                "request_bytes_median": int(np.median(v["request_bytes"])),
                **({"tokens": v["tokens"], "bits": v["bits"]} if "tokens" in v else {})}
            for p, v in edge["paths"].items()}
