"""``alignedvq compare-edges``: the ONNX edge against the torch edge on a question set.

For every image both edges compute indices (token match rate; each differing token is checked
for being a near-tie in the nearest-codeword search, alignedvq/edge_export.py); then every question
goes to one real cloud-server twice, once with each edge's messages, and the answers are
compared with each other and with the reference answer (accuracy of both)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from alignedvq.data.datasets import read_dataset
from alignedvq.edge_export import near_tie_report
from alignedvq.evaluation.answers import is_correct
from common.imaging.policy import open_image


def _answer(stub, messages, timeout: float = 120.0) -> str:
    for response in stub.AnswerFromCodes(iter(messages), timeout=timeout):
        if response.WhichOneof("part") == "summary":
            return response.summary.answer
    raise RuntimeError("the answer stream ended without a summary")


def compare_edges(dataset: Path, onnx_dir: Path, model_dir: Path, codec_dir: Path,
                  server: str | None = None, limit: int | None = None, batch: int = 32,
                  concurrency: int = 8) -> dict:
    from alignedvq.server_process import ServerProcess
    from alignedvq.v1 import inference_pb2_grpc as pb_grpc
    from common.split.vision import features_at_cut
    from common.wire.channels import channel
    from common.wire.packing import pack
    from edge_agent.onnx_edge import OnnxEdge
    from edge_agent.torch_edge import EdgeHalf

    started = time.monotonic()
    # One question per image: each sample's first turn (asked without history).
    rows = [(s.image, s.turns[0]) for s in read_dataset(Path(dataset), limit=limit)]
    torch_edge, onnx_edge = EdgeHalf(model_dir, codec_dir), OnnxEdge(onnx_dir)
    bits, stages = onnx_edge.spec.bits, onnx_edge.spec.stages
    torch_idx, onnx_idx, reports = [], [], []
    for i in range(0, len(rows), batch):
        images = [open_image(image) for image, _ in rows[i:i + batch]]
        with torch.no_grad():
            features = features_at_cut(torch_edge.vision, torch_edge.image_processor,
                                       images).float()
            t = torch_edge.codec.quantize(torch_edge.codec.project(features))[0].numpy()
        # One image per run, as edge-agent sends them: an int8 graph's dynamic quantisation
        # scales depend on the whole batch (alignedvq/edge_quantize.py).
        o = np.concatenate([onnx_edge.indices([image]) for image in images])
        reports.append(near_tie_report(torch_edge.codec, features, t, o))
        torch_idx.append(t)
        onnx_idx.append(o)
    t_all, o_all = np.concatenate(torch_idx), np.concatenate(onnx_idx)

    def messages(edge, idx, question):
        return edge.messages([pack(idx[:, s], bits) for s in range(stages)], question)

    proc = None
    if server is None:
        proc = ServerProcess("--model", str(model_dir), "--codec", str(codec_dir)).wait_ready()
        server = proc.address
    try:
        stub = pb_grpc.InferenceServiceStub(channel(server))
        jobs = [(e, idx, turn.question) for k, (_, turn) in enumerate(rows)
                for e, idx in ((torch_edge, t_all[k]), (onnx_edge, o_all[k]))]
        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(lambda j: _answer(stub, messages(*j)), jobs))
    finally:
        if proc is not None:
            proc.terminate()
    torch_answers, onnx_answers = answers[0::2], answers[1::2]
    differing_images = int((t_all != o_all).reshape(len(rows), -1).any(-1).sum())
    return {
        "questions": len(rows),
        "tokens": int(t_all.shape[0] * t_all.shape[1]),
        "token_match_rate": float((t_all == o_all).all(-1).mean()),
        "index_match_rate": float((t_all == o_all).mean()),
        "differing_tokens": sum(r["differing_tokens"] for r in reports),
        "near_ties": sum(r["near_ties"] for r in reports),
        "images_with_a_difference": differing_images,
        "answer_agreement": float(np.mean([a == b for a, b in zip(torch_answers,
                                                                   onnx_answers)])),
        "accuracy_torch_edge": float(np.mean([is_correct(a, list(turn.accepted))
                                              for a, (_, turn) in zip(torch_answers, rows)])),
        "accuracy_onnx_edge": float(np.mean([is_correct(a, list(turn.accepted))
                                             for a, (_, turn) in zip(onnx_answers, rows)])),
        "seconds": round(time.monotonic() - started, 1),
    }
