"""``alignedvq eval``: accuracy of a LLaVA checkpoint through any mode on a dataset in any of the
three formats alignedvq/data/datasets.py reads, scored by any scorer of
alignedvq/evaluation/scoring.py (docs/evaluation.md). Every turn of a multi-turn conversation is
one question, asked after the conversation's earlier reference turns."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from alignedvq.data.datasets import Sample, read_dataset
from alignedvq.evaluation.original_model import answer_batch, load_llava
from alignedvq.evaluation.scoring import scorer as scorer_named
from common.imaging.policy import open_image
from common.wire.modes import FEATURE_MODES, IMAGE_MODE

# The same names as `edge-agent --mode`, plus the unmodified model ("original").
MODES = ("original", *FEATURE_MODES, IMAGE_MODE)
# Earlier releases called the cloud-only baseline "jpeg"; scripts that still say so keep working.
OLD_MODE_NAMES = {"jpeg": IMAGE_MODE}
# The cloud-only baseline: what `edge-agent --mode image` uploads (its default quality).
JPEG_QUALITY = 90
# ShapesVQA answers are one or two words; a real checkpoint on open data may need more.
MAX_NEW_TOKENS = 8
# The official VQAv2 rule assumes this many human answers per question.
VQA_HUMAN_ANSWERS = 10


class OriginalAnswerer:
    """The unmodified model, pixels in."""

    def __init__(self, model_dir: Path, device: str):
        self.model, self.processor = load_llava(model_dir, device=device)

    def __call__(self, images, questions, histories, max_new_tokens) -> list[str]:
        return answer_batch(self.model, self.processor, images, questions, max_new_tokens,
                            histories)


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
        # At the edge's cut (the codec's, unless --split-layer said otherwise and matched it).
        self.cloud = CloudHalf(model_dir, codec_dir if mode == "alignedvq" else None,
                               self.edge.split_layer, device,
                               vision_fingerprints={self.edge.split_layer:
                                                    self.edge.vision_fingerprint})
        self.fp16 = Fp16Encoding(self.edge.tokens, self.cloud.dim)
        self.payload_bytes: list[int] = []
        self.fp16_bytes: list[int] = []

    def __call__(self, images, questions, histories, max_new_tokens) -> list[str]:
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
        return self.cloud.answer(torch.stack(decoded), questions, max_new_tokens,
                                 histories=histories)


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

    def __call__(self, images, questions, histories, max_new_tokens) -> list[str]:
        import io

        from alignedvq.v1 import inference_pb2 as pb
        from common.imaging.policy import jpeg_baseline

        received = []
        for image in images:
            data = jpeg_baseline(image, self.size, self.quality)
            self.payload_bytes.append(len(pb.AnswerFromImageRequest(image=data)
                                          .SerializeToString()))
            received.append(open_image(io.BytesIO(data)))
        return answer_batch(self.model, self.processor, received, questions, max_new_tokens,
                            histories)


@dataclass(frozen=True)
class Question:
    """One question as eval asks it: turn ``turn`` of sample ``sample_index``, after the
    conversation's earlier reference turns (teacher forcing: the model's own earlier answers
    never feed later turns, so every turn is scored on the same context the data gives)."""
    sample_index: int
    sample: Sample
    turn: int

    @property
    def history(self) -> tuple[tuple[str, str], ...]:
        return tuple((t.question, t.answer) for t in self.sample.turns[:self.turn])


def questions_of(samples) -> list[Question]:
    return [Question(i, s, k) for i, s in enumerate(samples) for k in range(len(s.turns))]


def make_answerer(mode: str, model_dir: Path, device: str, codec_dir, split_layer):
    if mode == "original":
        return OriginalAnswerer(model_dir, device)
    if mode == IMAGE_MODE:
        return ImageUploadAnswerer(model_dir, device)
    return SplitAnswerer(model_dir, mode, codec_dir, split_layer, device)


def _open_predictions(path: Path | None):
    """Opened before the run, so a path that cannot be written fails in a second, not after it."""
    if path is None:
        return None
    try:
        return Path(path).open("w", encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--predictions {path}: cannot be written ({e.strerror})") from None


def _few_answers_warning(questions: list[Question], scorer: str) -> list[str]:
    if not scorer.startswith("vqav2"):
        return []
    few = sum(len(q.sample.turns[q.turn].accepted) < VQA_HUMAN_ANSWERS for q in questions)
    if not few:
        return []
    return [f"{few} of {len(questions)} questions have fewer than {VQA_HUMAN_ANSWERS} human "
            f"answers; the {scorer} rule is made for {VQA_HUMAN_ANSWERS} (with 3 or fewer even "
            "a right answer scores below 1, with one it scores 0): use --scorer exact for them"]


def evaluate(model_dir: Path, dataset: Path, limit: int | None = None, batch_size: int = 64,
             device: str = "cpu", progress: bool = True, mode: str = "original",
             codec_dir: Path | None = None, split_layer: int | None = None,
             scorer: str = "exact", prompt_suffix: str = "", image_folder: Path | None = None,
             max_new_tokens: int = MAX_NEW_TOKENS, predictions_path: Path | None = None,
             answerer=None) -> dict:
    """Greedy answers for the first ``limit`` questions, each scored in [0, 1] by ``scorer``;
    ``accuracy`` is the mean score. An image that fails to load is an error: its questions score
    0 and it is listed under ``errors``, never a crash. ``prompt_suffix`` is appended to each
    asked question (not to the history turns before it). ``predictions_path``: one JSON line
    per question, in dataset order. ``answerer``: one the caller made for ``mode`` (a benchmark
    that changes what crosses the cut), instead of :func:`make_answerer`'s."""
    mode = OLD_MODE_NAMES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    score = scorer_named(scorer)
    if max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    started = time.monotonic()
    samples = read_dataset(dataset, image_folder, limit)
    questions = questions_of(samples)[:limit]
    out = _open_predictions(predictions_path)
    try:
        answerer = answerer or make_answerer(mode, model_dir, device, codec_dir, split_layer)
        total = 0.0
        by_family: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        errors, predictions, failed = [], [], {}
        for start in tqdm(range(0, len(questions), batch_size), desc="eval", unit="batch",
                          disable=not progress):
            chunk = questions[start:start + batch_size]
            images, asked, opened = [], [], {}
            for q in chunk:
                if q.sample_index not in opened and q.sample_index not in failed:
                    try:
                        opened[q.sample_index] = open_image(q.sample.image)
                    except (OSError, ValueError) as e:
                        failed[q.sample_index] = str(e)
                        errors.append({"image": str(q.sample.image), "where": q.sample.where,
                                       "error": str(e)})
                if q.sample_index in opened:
                    images.append(opened[q.sample_index])
                    asked.append(q)
            texts = [q.sample.turns[q.turn].question + prompt_suffix for q in asked]
            answers = (answerer(images, texts, [q.history for q in asked], max_new_tokens)
                       if asked else [])
            by_question = dict(zip(map(id, asked), zip(texts, answers)))
            for q in chunk:
                turn = q.sample.turns[q.turn]
                text, answer = by_question.get(id(q), (turn.question + prompt_suffix, None))
                value = score(answer, turn.accepted) if answer is not None else 0.0
                total += value
                family = by_family[q.sample.family or "all"]
                family[0] += value
                family[1] += 1
                record = {"where": q.sample.where, "turn": q.turn, "image": str(q.sample.image),
                          "question": text, "prediction": answer, "expected": turn.answer,
                          "accepted": list(turn.accepted), "score": value}
                if answer is None:
                    record["error"] = failed[q.sample_index]
                predictions.append(record)
                if out is not None:
                    out.write(json.dumps(record) + "\n")
    finally:
        if out is not None:
            out.close()
    n = len(questions)
    return {
        "mode": mode,
        "model": str(model_dir),
        "dataset": str(dataset),
        "format": samples.format,
        "scorer": scorer,
        "prompt_suffix": prompt_suffix,
        "n": n,
        "images": len({q.sample_index for q in questions}),
        "skipped_text_only": samples.skipped_text_only,
        "accuracy": total / n if n else 0.0,
        "by_family": {k: {"accuracy": c / t if t else 0.0, "n": t}
                      for k, (c, t) in sorted(by_family.items())},
        **_payload(mode, answerer, codec_dir),
        "errors": errors,
        "warnings": _few_answers_warning(questions, scorer),
        "seconds": round(time.monotonic() - started, 2),
        "predictions": predictions,
    }


def _payload(mode: str, answerer, codec_dir: Path | None) -> dict:
    if mode == IMAGE_MODE and answerer.payload_bytes:
        return {"payload_bytes_mean": sum(answerer.payload_bytes) / len(answerer.payload_bytes),
                "jpeg_quality": answerer.quality, "image_size": answerer.size}
    if mode not in ("original", IMAGE_MODE) and answerer.payload_bytes:
        mean = sum(answerer.payload_bytes) / len(answerer.payload_bytes)
        fp16 = sum(answerer.fp16_bytes) / len(answerer.fp16_bytes)
        return {"payload_bytes_mean": mean, "compression_ratio_vs_fp16": fp16 / mean,
                "fp16_payload_bytes_mean": fp16, "image_tokens": answerer.edge.tokens,
                "codec": str(codec_dir) if mode == "alignedvq" else None}
    return {}
