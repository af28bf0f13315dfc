"""Time to first token of a conversation's first turn against its follow-ups (issue 23), at the
edge, against a running ``cloud-server``: ``python -m alignedvq.benchmarks.followup_ttft
--server HOST:PORT --dataset DIR``.

Per mode (codes, upload): ``--conversations`` conversations of three questions about one image
each (the dataset's question, then two more), the first conversation a warm-up not counted.
TTFT is measured by the client library from the start of the turn (the edge's encoding
included) to the first text delta. A follow-up sends the image handle the first answer gave,
not the image; its ``cached_tokens`` and image bytes (0) are reported beside.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import grpc

from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR

LATER = ("what shape is the red object?", "how many objects are there?")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(stub, edge, rows: list[dict], folder: Path, mode: str, image_size: int) -> dict:
    from edge_agent.client import ask_follow_up, ask_with_codes, ask_with_image

    first, follow, cached, image_bytes = [], [], [], []
    for i, row in enumerate([rows[0], *rows]):  # the first conversation warms up
        image = open_image(folder / row["image"])
        r = (ask_with_codes(stub, edge, image, row["question"]) if mode == "codes"
             else ask_with_image(stub, image, row["question"], image_size))
        history, turns = [(row["question"], r.answer)], []
        for question in LATER:
            f = ask_follow_up(stub, r.image_handle, question, history, upload=mode == "image")
            history.append((question, f.answer))
            turns.append(f)
        if i:
            first.append(r.ttft_ms)
            follow += [f.ttft_ms for f in turns]
            cached += [f.cached_tokens for f in turns]
            image_bytes += [f.image_bytes for f in turns]
    return {"mode": mode, "conversations": len(rows),
            "first_turn_ttft_ms": {"p50": round(statistics.median(first), 2),
                                   "p90": round(percentile(first, 0.9), 2)},
            "follow_up_ttft_ms": {"p50": round(statistics.median(follow), 2),
                                  "p90": round(percentile(follow, 0.9), 2)},
            "follow_up_cached_tokens": sorted(set(cached)),
            "follow_up_image_bytes": sorted(set(image_bytes))}


def main(argv: list[str] | None = None) -> int:
    import torch

    from alignedvq.v1 import inference_pb2 as pb
    from edge_agent.torch_edge import EdgeHalf

    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.followup_ttft",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="a running cloud-server HOST:PORT")
    p.add_argument("--dataset", required=True, help="an `alignedvq dataset` folder")
    p.add_argument("--conversations", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the server shares this machine's cores
    folder = Path(args.dataset)
    rows = [json.loads(line) for line in (folder / "questions.jsonl").read_text().splitlines()]
    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(args.server))
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60)
    edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)
    for mode in ("codes", "image"):
        print(json.dumps(measure(stub, edge, rows[:args.conversations], folder, mode,
                                 info.image_size)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
