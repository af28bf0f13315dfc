"""``make demo``: the embedded model answers questions about the shipped sample images.

Runs the whole LLaVA in one process; the edge/cloud service replaces this once it exists.
"""

from __future__ import annotations

import json
import sys
import time

from common.answers import is_correct
from common.llava_io import answer_batch, load_llava, open_image
from common.paths import DEFAULT_MODEL_DIR, SAMPLES_DIR


def main() -> int:
    rows = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]
    t0 = time.monotonic()
    model, processor = load_llava(DEFAULT_MODEL_DIR)
    print(f"loaded the embedded model from {DEFAULT_MODEL_DIR} in {time.monotonic() - t0:.1f} s")
    images = [open_image(SAMPLES_DIR / r["image"]) for r in rows]
    t0 = time.monotonic()
    answers = answer_batch(model, processor, images, [r["question"] for r in rows])
    elapsed = time.monotonic() - t0
    right = 0
    for row, answer in zip(rows, answers):
        ok = is_correct(answer, row["answer"])
        right += ok
        print(f"  {row['image']:<22} {row['question']:<36} -> {answer:<14} "
              f"({'right' if ok else 'expected ' + row['answer']})")
    print(f"{right}/{len(rows)} right, {elapsed * 1000 / len(rows):.0f} ms per question on CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
