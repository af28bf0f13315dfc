"""alignedvq/data/datasets.py: the three formats, their detection, image folders and every error
naming its line or entry (all in-process, on small files written here)."""

import json
from pathlib import Path

import pytest

from alignedvq.data.datasets import DatasetError, Sample, Turn, detect_format, read_dataset

pytestmark = pytest.mark.unit


def jsonl(path: Path, *rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def llava(path: Path, *entries) -> Path:
    path.write_text(json.dumps(list(entries), indent=1))
    return path


def conv(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def test_shapes_lines_with_a_string_or_a_list_answer(tmp_path):
    path = jsonl(tmp_path / "q.jsonl",
                 {"image": "a.png", "question": "how many?", "answer": "two", "family": "count"},
                 "",  # blank lines are allowed
                 {"image": "b.png", "question": "what shape?", "answer": ["square", "box"]})
    data = read_dataset(path)
    assert data.format == "shapes" and data.skipped_text_only == 0
    assert data[0] == Sample(tmp_path / "a.png", (Turn("how many?", "two", ("two",)),), "count",
                             f"{path}:1")
    assert data[1].turns == (Turn("what shape?", "square", ("square", "box")),)
    assert data[1].family is None and data[1].where == f"{path}:3"


def test_vqa_lines_train_on_the_most_frequent_answer_and_score_on_all(tmp_path):
    human = ["2", "two", "2", "3", "two", "2", "2", "two", "two", "3"]  # 4 x "2", 4 x "two"
    path = jsonl(tmp_path / "vqa.jsonl",
                 {"image": "x.jpg", "question": "how many?", "answers": human,
                  "answer_type": "number", "question_type": "how many"},
                 {"image": "y.jpg", "question": "color?",
                  "answers": [{"answer": "red", "answer_id": 1}, {"answer": "blue"},
                              {"answer": "blue"}], "question_type": "what color"})
    data = read_dataset(path)
    assert data.format == "vqa"
    first, second = data
    assert first.turns[0].answer == "2"                # a tie: the first seen
    assert first.turns[0].accepted == tuple(human)     # duplicates kept, order kept
    assert first.family == "number"                    # answer_type before question_type
    assert second.turns[0] == Turn("color?", "blue", ("red", "blue", "blue"))
    assert second.family == "what color"


def test_llava_multi_turn_text_only_skipped_image_mark_kept(tmp_path):
    path = llava(tmp_path / "llava.json",
                 {"id": "000123", "image": "coco/1.jpg",
                  "conversations": conv("<image>\nWhat is it?", "A cat.", "Its colour?", "Grey.")},
                 {"id": "text", "conversations": conv("Hello", "Hi!")},
                 {"id": "7", "image": ["one.png"], "conversations": conv("Where? <image>", "Left")})
    data = read_dataset(path)
    assert data.format == "llava" and data.skipped_text_only == 1 and len(data) == 2
    assert data[0].turns == (Turn("<image>\nWhat is it?", "A cat.", ("A cat.",)),
                             Turn("Its colour?", "Grey.", ("Grey.",)))
    assert data[0].image == tmp_path / "coco/1.jpg" and data[0].family is None
    assert data[0].where == f"{path}: entry 0 (id 000123)"
    assert data[1].image == tmp_path / "one.png" and data[1].where == f"{path}: entry 2 (id 7)"


def test_llava_objects_as_json_lines_too(tmp_path):
    path = jsonl(tmp_path / "llava.jsonl",
                 {"id": 1, "image": "a.png", "conversations": conv("<image>\nq", "a")})
    assert detect_format(path) == "llava"
    assert read_dataset(path)[0].turns == (Turn("<image>\nq", "a", ("a",)),)


@pytest.mark.parametrize("text,expected", [
    ('  \n[{"id": 1}]', "llava"),
    ('\n{"image": "a", "question": "q", "answers": ["x"]}\n', "vqa"),
    ('{"image": "a", "question": "q", "answer": "x"}\n', "shapes"),
    ('{"image": "a", "question": "q"}\n', "shapes"),  # then reported as missing answer
])
def test_detect_format(tmp_path, text, expected):
    path = tmp_path / "d"
    path.write_text(text)
    assert detect_format(path) == expected


def test_image_folder_and_absolute_paths(tmp_path):
    absolute = tmp_path / "elsewhere" / "z.png"
    path = jsonl(tmp_path / "q.jsonl", {"image": "a.png", "question": "q", "answer": "x"},
                 {"image": str(absolute), "question": "q", "answer": "x"})
    data = read_dataset(path, image_folder=tmp_path / "imgs")
    assert [s.image for s in data] == [tmp_path / "imgs" / "a.png", absolute]


def test_limit_counts_samples_after_skipping_text_only(tmp_path):
    path = llava(tmp_path / "l.json", {"id": 0, "conversations": conv("t", "u")},
                 *({"id": i, "image": f"{i}.png", "conversations": conv("q", "a", "q2", "a2")}
                   for i in range(1, 5)))
    data = read_dataset(path, limit=2)
    assert [s.where.rsplit("id ", 1)[1] for s in data] == ["1)", "2)"]
    assert data.skipped_text_only == 1



GOOD = {"image": "a.png", "question": "q", "answer": "x"}
ENTRY = {"id": "e1", "image": "a.png", "conversations": conv("<image>\nq", "a")}


@pytest.mark.parametrize("lines,where,message", [
    ([GOOD, "{not json"], ":2:", "not JSON"),
    ([GOOD, "[1, 2]"], ":2:", "not a JSON object"),
    ([GOOD, {"image": "a.png", "question": "q"}], ":2:", "missing field(s) answer"),
    ([GOOD, {"question": "q", "answer": "x"}], ":2:", "missing field(s) image"),
    ([GOOD, {"image": "a.png", "question": "", "answer": "x"}], ":2:", "'question' must be"),
    ([GOOD, {"image": "a.png", "question": "q", "answer": []}], ":2:", "non-empty list"),
    ([GOOD, {"image": "a.png", "question": "q", "answer": [3]}], ":2:", "neither a string"),
    ([GOOD, {"image": 5, "question": "q", "answer": "x"}], ":2:", "'image' must be"),
    ([{**GOOD, "answers": ["x"]}, GOOD], ":2:", "missing field(s) answers"),
    ([{**GOOD, "answers": [{"id": 1}]}], ":1:", "neither a string"),
    ([ENTRY, {"id": 2, "image": "a.png"}], ":2", "missing field(s) conversations"),
])
def test_every_line_error_names_the_file_and_line(tmp_path, lines, where, message):
    path = jsonl(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(DatasetError) as e:
        read_dataset(path)
    text = str(e.value)
    assert f"{path}{where}" in text and message in text and "\n" not in text, text


@pytest.mark.parametrize("entries,message", [
    ([ENTRY, {"id": "x", "image": "a.png"}], "entry 1 (id x): missing field(s) conversations"),
    ([ENTRY, "text"], "entry 1: not a JSON object"),
    ([ENTRY, {**ENTRY, "id": "y", "conversations": conv("q")}], "entry 1 (id y): the conversa"
     "tion ends with a human turn"),
    ([{**ENTRY, "conversations": []}], "entry 0 (id e1): the conversation has no gpt turn"),
    ([{**ENTRY, "conversations": [{"from": "gpt", "value": "a"}]}],
     "entry 0 (id e1): conversations[0] is from 'gpt' where 'human' was expected"),
    ([{**ENTRY, "conversations": conv("q", "a") + [{"from": "gpt", "value": "b"}]}],
     "conversations[2] is from 'gpt'"),
    ([{**ENTRY, "conversations": [{"from": "human"}]}], "conversations[0] needs 'from' and"),
    ([{**ENTRY, "conversations": "q"}], "'conversations' must be a list"),
    ([{**ENTRY, "image": ["a.png", "b.png"]}], "several images per conversation"),
])
def test_every_entry_error_names_the_file_and_entry(tmp_path, entries, message):
    path = llava(tmp_path / "bad.json", *entries)
    with pytest.raises(DatasetError) as e:
        read_dataset(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value), str(e.value)


@pytest.mark.parametrize("text,message", [
    ("", "empty dataset"),
    ("\n  \n", "empty dataset"),
    ("[]", "empty dataset"),
    ('[{"id": 1, "conversations": []}]', "1 text-only entries skipped"),
    ('[{"id": 1}', "not JSON (Expecting"),
    ('{"a": 1} [', "not JSON"),  # JSON Lines: the line itself is not JSON
])
def test_empty_and_unparseable_files(tmp_path, text, message):
    path = tmp_path / "d.json"
    path.write_text(text)
    with pytest.raises(DatasetError) as e:
        read_dataset(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value), str(e.value)


def test_a_missing_file_or_a_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="is a folder"):
        read_dataset(tmp_path)


def test_a_top_level_object_is_not_a_llava_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"data": [1]}\n')  # one JSON object on one line: read as JSON Lines
    with pytest.raises(DatasetError, match="missing field"):
        read_dataset(path)
