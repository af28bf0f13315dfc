"""``alignedvq eval``: accuracy of a LLaVA checkpoint on any JSON Lines VQA file in the
ShapesVQA format (``image``, ``question``, ``answer`` string or list, optional ``family``)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from common.answers import is_correct
from common.llava_io import answer_batch, load_llava, open_image


class DatasetError(ValueError):
    pass


def read_questions(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with Path(path).open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            missing = [k for k in ("image", "question", "answer") if k not in row]
            if missing:
                raise DatasetError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}; "
                                   "each line needs image, question and answer")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def evaluate(model_dir: Path, dataset: Path, limit: int | None = None, batch_size: int = 64,
             device: str = "cpu", progress: bool = True) -> dict:
    """Greedy answers for every question. An image that fails to load is an error: counted as a
    wrong answer in ``accuracy`` and listed under ``errors``, never a crash."""
    started = time.monotonic()
    rows = read_questions(dataset, limit)
    model, processor = load_llava(model_dir, device=device)
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
        answers = answer_batch(model, processor, images, [r["question"] for r in ok_rows]) \
            if ok_rows else []
        for row, answer in zip(ok_rows, answers):
            hit = is_correct(answer, row["answer"])
            correct += hit
            fam = by_family[row.get("family", "all")]
            fam[0] += hit
            fam[1] += 1
            predictions.append({"question": row["question"], "answer": answer,
                                "expected": row["answer"], "correct": hit})
    n = len(rows)
    return {
        "mode": "original",
        "model": str(model_dir),
        "dataset": str(dataset),
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "by_family": {k: {"accuracy": c / t if t else 0.0, "n": t}
                      for k, (c, t) in sorted(by_family.items())},
        "errors": errors,
        "seconds": round(time.monotonic() - started, 2),
        "predictions": predictions,
    }
