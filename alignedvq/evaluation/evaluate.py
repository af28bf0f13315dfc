"""``alignedvq eval``: accuracy of a LLaVA checkpoint on any JSON Lines VQA file in the
ShapesVQA format (``image``, ``question``, ``answer`` string or list, optional ``family``)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from alignedvq.data.datasets import read_questions
from alignedvq.evaluation.answers import is_correct
from alignedvq.evaluation.original_model import answer_batch, load_llava
from common.imaging.policy import open_image
from common.wire.modes import FEATURE_MODES, IMAGE_MODE

# The same names as `edge-agent --mode`, plus the unmodified model ("original").
MODES = ("original", *FEATURE_MODES, IMAGE_MODE)
# Earlier releases called the cloud-only baseline "jpeg"; scripts that still say so keep working.
OLD_MODE_NAMES = {"jpeg": IMAGE_MODE}
# The cloud-only baseline: what `edge-agent --mode image` uploads (its default quality).
JPEG_QUALITY = 90


class SplitAnswerer:
    """Answers through the edge/cloud split in one process: the edge half encodes, the request
    messages are serialised (their size is the payload), parsed back and decoded by the cloud
    half, exactly the bytes a remote cloud would receive."""

    def __init__(self, model_dir: Path, mode: str, codec_dir: Path | None,
                 split_layer: int | None, device: str):
        from cloud_server.cloud_half import CloudHalf
        from common.codec.encodings import Fp16Encoding
        from edge_agent.torch_edge import EdgeHalf

        self.mode = mode
        self.edge = EdgeHalf(model_dir, codec_dir, mode, split_layer, device)
        self.cloud = CloudHalf(model_dir, codec_dir if mode == "alignedvq" else None,
                               split_layer, device,
                               vision_fingerprint=self.edge.vision_fingerprint)
        self.fp16 = Fp16Encoding(self.edge.tokens, self.cloud.dim)
        self.payload_bytes: list[int] = []
        self.fp16_bytes: list[int] = []

    def __call__(self, images, questions) -> list[str]:
        import torch

        from alignedvq.v1 import inference_pb2 as pb
        from common.codec.encodings import wire_bytes
        from common.split.vision import features_at_cut
        from common.wire.messages import codes_request_messages

        features = features_at_cut(self.edge.vision, self.edge.image_processor, images)
        chunk_sets = self.edge.encoding.encode_batch(features)
        decoded = []
        for feats, chunks in zip(features, chunk_sets):
            # Image payload only: the question travels too, but it is not the image's cost.
            wire = [m.SerializeToString() for m in self.edge.messages(chunks)]
            self.payload_bytes.append(sum(map(len, wire)))
            received = [pb.AnswerFromCodesRequest.FromString(w) for w in wire]
            decoded.append(self.cloud.decode(self.mode, [m.chunk.packed_indices
                                                         for m in received[1:]]))
            self.fp16_bytes.append(wire_bytes(codes_request_messages(
                self.fp16.encoding, self.fp16.tokens, self.fp16.bits, self.fp16.stages,
                self.fp16.encode(feats), self.edge.vision_fingerprint, "")))
        return self.cloud.answer(torch.stack(decoded), questions)


class ImageUploadAnswerer:
    """The cloud-only path: each image as the square the model sees, JPEG-encoded exactly as the
    edge uploads it (``common.imaging.policy.jpeg_baseline``), decoded again and answered by the
    unmodified model. The payload is the serialised ``AnswerFromImageRequest`` (question
    excluded)."""

    def __init__(self, model_dir: Path, device: str, quality: int = JPEG_QUALITY):
        self.model, self.processor = load_llava(model_dir, device=device)
        self.size = self.model.config.vision_config.image_size
        self.quality = quality
        self.payload_bytes: list[int] = []

    def __call__(self, images, questions) -> list[str]:
        import io

        from alignedvq.v1 import inference_pb2 as pb
        from common.imaging.policy import jpeg_baseline

        received = []
        for image in images:
            data = jpeg_baseline(image, self.size, self.quality)
            self.payload_bytes.append(len(pb.AnswerFromImageRequest(image=data)
                                          .SerializeToString()))
            received.append(open_image(io.BytesIO(data)))
        return answer_batch(self.model, self.processor, received, questions)


def evaluate(model_dir: Path, dataset: Path, limit: int | None = None, batch_size: int = 64,
             device: str = "cpu", progress: bool = True, mode: str = "original",
             codec_dir: Path | None = None, split_layer: int | None = None) -> dict:
    """Greedy answers for every question. An image that fails to load is an error: counted as a
    wrong answer in ``accuracy`` and listed under ``errors``, never a crash."""
    mode = OLD_MODE_NAMES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    started = time.monotonic()
    rows = read_questions(dataset, limit)
    if mode == "original":
        model, processor = load_llava(model_dir, device=device)
        answerer = lambda images, questions: answer_batch(model, processor, images, questions)  # noqa: E731
    elif mode == IMAGE_MODE:
        answerer = ImageUploadAnswerer(model_dir, device)
    else:
        answerer = SplitAnswerer(model_dir, mode, codec_dir, split_layer, device)
    root = Path(dataset).resolve().parent
    correct = 0
    by_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    errors = []
    predictions = []
    for start in tqdm(range(0, len(rows), batch_size), desc="eval", unit="batch",
                      disable=not progress):
        chunk = rows[start:start + batch_size]
        images, ok_rows = [], []
        for row in chunk:
            try:
                images.append(open_image(root / row["image"]))
                ok_rows.append(row)
            except (OSError, ValueError) as e:
                errors.append({"image": row["image"], "error": str(e)})
                by_family[row.get("family", "all")][1] += 1
        answers = answerer(images, [r["question"] for r in ok_rows]) if ok_rows else []
        for row, answer in zip(ok_rows, answers):
            hit = is_correct(answer, row["answer"])
            correct += hit
            fam = by_family[row.get("family", "all")]
            fam[0] += hit
            fam[1] += 1
            predictions.append({"question": row["question"], "answer": answer,
                                "expected": row["answer"], "correct": hit})
    n = len(rows)
    payload = {}
    if mode == IMAGE_MODE and answerer.payload_bytes:
        payload = {"payload_bytes_mean": sum(answerer.payload_bytes) / len(answerer.payload_bytes),
                   "jpeg_quality": answerer.quality, "image_size": answerer.size}
    elif mode != "original" and answerer.payload_bytes:
        mean = sum(answerer.payload_bytes) / len(answerer.payload_bytes)
        fp16 = sum(answerer.fp16_bytes) / len(answerer.fp16_bytes)
        payload = {"payload_bytes_mean": mean, "compression_ratio_vs_fp16": fp16 / mean,
                   "fp16_payload_bytes_mean": fp16, "image_tokens": answerer.edge.tokens,
                   "codec": str(codec_dir) if mode == "alignedvq" else None}
    return {
        "mode": mode,
        "model": str(model_dir),
        "dataset": str(dataset),
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "by_family": {k: {"accuracy": c / t if t else 0.0, "n": t}
                      for k, (c, t) in sorted(by_family.items())},
        **payload,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 2),
        "predictions": predictions,
    }
