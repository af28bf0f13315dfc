"""Reading a VQA question file (JSON Lines, the ShapesVQA format of docs/shapes_vqa.md: one
object a line with ``image``, ``question`` and ``answer``): shared by evaluation and training."""

from __future__ import annotations

import json
from pathlib import Path


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
