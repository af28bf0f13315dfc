"""Answer comparison as ShapesVQA (and VQA-style sets) define it."""

from __future__ import annotations


def normalize_answer(text: str) -> str:
    """Lower-case, strip surrounding white space and one trailing full stop."""
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def is_correct(prediction: str, expected: str | list[str]) -> bool:
    accepted = [expected] if isinstance(expected, str) else list(expected)
    return normalize_answer(prediction) in {normalize_answer(a) for a in accepted}
