"""Reading a VQA dataset in any of the three formats evaluation and training take, detected from
the file (docs/evaluation.md has one example of each):

- ``shapes``: JSON Lines, one question a line with ``image``, ``question`` and ``answer`` (a string
  or a list of accepted strings), optional ``family`` (docs/shapes_vqa.md);
- ``vqa``: JSON Lines with an ``answers`` list instead: strings, or VQAv2's annotation objects
  ``{"answer": ...}``; training uses the most frequent one, scorers compare with all of them;
- ``llava``: LLaVA's instruction data, a JSON array of ``{"id", "image", "conversations"}``
  with alternating ``human``/``gpt`` turns (multi-turn; entries without an image are skipped
  and counted). A JSON Lines file of such objects is read the same way.

Every error is a :class:`DatasetError` of one line naming the file and the line or entry."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("shapes", "vqa", "llava")


class DatasetError(ValueError):
    """One line, naming the file and the line (JSON Lines) or entry (JSON array): the CLI prints
    it and exits 2."""


@dataclass(frozen=True)
class Turn:
    question: str                # the human text; in LLaVA data it may hold "<image>"
    answer: str                  # what training distils (see the module docstring)
    accepted: tuple[str, ...]    # what a scorer compares with (VQA: every human answer, as given)


@dataclass(frozen=True)
class Sample:
    image: Path                  # resolved against --image-folder, else the file's folder
    turns: tuple[Turn, ...]      # >= 1; ShapesVQA and VQA lines have exactly one
    family: str | None           # ShapesVQA `family`, VQA `answer_type`/`question_type`
    where: str                   # "questions.jsonl:12" or "llava.json: entry 7 (id 000123)"


class Dataset(list):
    """The samples in file order, with the detected ``format`` and how many text-only LLaVA
    entries were skipped (the caller reports them)."""

    def __init__(self, samples=(), format: str = "shapes", skipped_text_only: int = 0):
        super().__init__(samples)
        self.format = format
        self.skipped_text_only = skipped_text_only


def detect_format(path: str | Path) -> str:
    """``llava`` for a JSON array (first non-blank character ``[``); otherwise JSON Lines, whose
    first object decides: ``conversations`` -> llava, ``answers`` -> vqa, else shapes (a line
    missing ``answer`` is then reported as such)."""
    path = Path(path)
    first = _first_character(path)
    if first is None:
        raise DatasetError(f"{path}: empty dataset (no questions)")
    if first == "[":
        return "llava"
    lines = _json_lines(path)
    try:
        _, obj = next(lines)  # there is one: the file has a non-blank character
    finally:
        lines.close()
    if "conversations" in obj:
        return "llava"
    return "vqa" if "answers" in obj else "shapes"


def read_dataset(path: str | Path, image_folder: str | Path | None = None,
                 limit: int | None = None) -> Dataset:
    """The first ``limit`` samples (images, or conversations) of ``path``, validated."""
    path = Path(path)
    fmt = detect_format(path)
    root = Path(image_folder) if image_folder is not None else path.resolve().parent
    dataset = Dataset(format=fmt)
    for where, obj in _objects(path, fmt):
        if limit is not None and len(dataset) >= limit:
            break
        if fmt == "llava":
            sample = _llava_sample(obj, where, root)
            if sample is None:
                dataset.skipped_text_only += 1
                continue
        else:
            sample = _line_sample(obj, where, root, fmt)
        dataset.append(sample)
    if not dataset:
        extra = (f" ({dataset.skipped_text_only} text-only entries skipped)"
                 if dataset.skipped_text_only else "")
        raise DatasetError(f"{path}: empty dataset (no questions with an image){extra}")
    return dataset


# --- reading -------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, not a dataset file") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({e.strerror})") from None


def _first_character(path: Path) -> str | None:
    """The first non-blank character, read in chunks: LLaVA's 1 GB file is one line."""
    _read_text_check(path)
    with path.open(encoding="utf-8", errors="replace") as f:
        while chunk := f.read(1 << 16):
            if stripped := chunk.lstrip():
                return stripped[0]
    return None


def _read_text_check(path: Path) -> None:
    """The one-line errors for a path that is not a readable file."""
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, not a dataset file")


def _json_lines(path: Path):
    """(where, object) for each non-blank line, streamed."""
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{lineno}", _json_line(path, lineno, line)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start} of a line)") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({e.strerror})") from None


def _json_line(path: Path, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{lineno}: not JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}:{lineno}: not a JSON object")
    return obj


def _objects(path: Path, fmt: str):
    """(where, object) pairs in file order."""
    if fmt != "llava" or _first_character(path) != "[":
        yield from _json_lines(path)
        return
    try:
        entries = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not JSON ({e.msg} at line {e.lineno} column "
                           f"{e.colno})") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON array of conversations")
    for i, entry in enumerate(entries):
        # Entries count from 0, as data[i] in Python or jq's .[i].
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: entry {i}: not a JSON object")
        yield f"{path}: entry {i}" + (f" (id {entry['id']})" if "id" in entry else ""), entry


def _text(obj: dict, key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: {key!r} must be a non-empty string")
    return value


def _require(obj: dict, keys: tuple[str, ...], where: str, hint: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}; {hint}")


def _line_sample(obj: dict, where: str, root: Path, fmt: str) -> Sample:
    if fmt == "shapes":
        _require(obj, ("image", "question", "answer"), where,
                 "each line needs image, question and answer (or answers)")
        accepted = _answer_list(obj["answer"], where, "answer")
        answer = accepted[0]  # a list names the preferred answer first
        family = obj.get("family")
    else:
        _require(obj, ("image", "question", "answers"), where,
                 "each line of a VQA-style file needs image, question and answers")
        accepted = _answer_list(obj["answers"], where, "answers")
        counts = Counter(accepted)
        answer = max(counts, key=counts.get)  # max keeps the first seen of a tie
        # answer_type (yes/no, number, other) first: VQAv2 results are reported by it.
        family = obj.get("answer_type", obj.get("question_type"))
    if family is not None and not isinstance(family, str):
        raise DatasetError(f"{where}: the family/answer_type must be a string")
    turn = Turn(_text(obj, "question", where), answer, accepted)
    return Sample(root / _text(obj, "image", where), (turn,), family, where)


def _answer_list(value, where: str, key: str) -> tuple[str, ...]:
    """A string, or a non-empty list of strings or VQAv2 ``{"answer": ...}`` objects."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise DatasetError(f"{where}: {key!r} must be a string or a non-empty list")
    answers = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("answer")
        if not isinstance(item, str):
            raise DatasetError(f"{where}: {key!r} holds something that is neither a string nor "
                               'an {"answer": "..."} object')
        answers.append(item)
    return tuple(answers)


def _llava_sample(obj: dict, where: str, root: Path) -> Sample | None:
    """None for a text-only entry (no image): LLaVA's mix has some; they are counted, not
    read."""
    if obj.get("image") is None:
        return None
    _require(obj, ("conversations",), where, "each entry needs image and conversations")
    image = obj["image"]
    if isinstance(image, list) and len(image) == 1:  # LLaVA-NeXT writes one image as a list
        image = image[0]
    if not isinstance(image, str) or not image.strip():
        raise DatasetError(f"{where}: 'image' must be one file name (several images per "
                           "conversation are not supported)")
    conversation = obj["conversations"]
    if not isinstance(conversation, list):
        raise DatasetError(f"{where}: 'conversations' must be a list")
    turns, question = [], None
    for k, message in enumerate(conversation):
        if not isinstance(message, dict) or not {"from", "value"} <= message.keys():
            raise DatasetError(f"{where}: conversations[{k}] needs 'from' and 'value'")
        role, value = message["from"], message["value"]
        if not isinstance(value, str):
            raise DatasetError(f"{where}: conversations[{k}]: 'value' must be a string")
        expected = "human" if question is None else "gpt"
        if role != expected:
            raise DatasetError(f"{where}: conversations[{k}] is from {role!r} where {expected!r} "
                               "was expected (turns must alternate human, gpt, ...)")
        if question is None:
            question = value
        else:
            turns.append(Turn(question, value, (value,)))
            question = None
    if question is not None:
        raise DatasetError(f"{where}: the conversation ends with a human turn and no answer")
    if not turns:
        raise DatasetError(f"{where}: the conversation has no gpt turn")
    return Sample(root / image, tuple(turns), None, where)
