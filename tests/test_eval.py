"""``alignedvq eval`` as a user runs it, on real files: the command's main in this process,
and the real console script where the process is the point (exit code, stderr)."""

import json
import subprocess
from pathlib import Path

import pytest
from conftest import cli, run_in_process

from alignedvq.cli import main as alignedvq
from alignedvq.data.shapes_vqa import FAMILIES, write_dataset
from alignedvq.evaluation import evaluate as evaluate_module
from alignedvq.evaluation.scoring import vqav2_score
from common.paths import SAMPLES_DIR


def run_eval(*args):
    return run_in_process(alignedvq, ["eval", *args])


def test_eval_json_on_a_fresh_test_split(original_eval):
    result = original_eval  # `eval --dataset SPLIT --json --batch-size 32` (tests/conftest.py)
    assert result["mode"] == "original"
    assert result["n"] == 60
    assert set(result["by_family"]) <= set(FAMILIES)
    assert sum(f["n"] for f in result["by_family"].values()) == 60
    assert result["accuracy"] >= 0.85, result
    assert result["errors"] == []


def test_limit_and_text_output(tmp_path):
    path = write_dataset(tmp_path, 10, seed=3, progress=False)
    out = run_eval("--dataset", str(path), "--limit", "4")
    assert out.returncode == 0, out.stderr
    assert "on 4 questions" in out.stdout


def test_unloadable_images_are_reported_not_fatal(tmp_path):
    path = write_dataset(tmp_path, 3, seed=4, progress=False)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = path.read_text().splitlines()
    rows.append(json.dumps({"image": "broken.png", "question": "how many objects are there?",
                            "answer": "two", "family": "count_all"}))
    rows.append(json.dumps({"image": "missing.png", "question": "how many objects are there?",
                            "answer": ["two", "2"]}))
    path.write_text("\n".join(rows) + "\n")
    out = run_eval("--dataset", str(path), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["n"] == 5
    assert sorted(Path(e["image"]).name for e in result["errors"]) == ["broken.png",
                                                                        "missing.png"]
    assert result["accuracy"] <= 3 / 5


@pytest.mark.integration
def test_malformed_file_is_a_clear_error(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"image": "a.png", "question": "x?"}\n')
    out = subprocess.run(cli("alignedvq") + ["eval", "--dataset", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "missing field(s) answer" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr


def test_a_bad_llava_entry_is_one_line_naming_it(tmp_path):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([{"id": "ok", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
        {"id": "bad", "image": "a.png", "conversations": [{"from": "gpt", "value": "a"}]}]))
    out = run_eval("--dataset", path)
    assert out.returncode == 2
    assert out.stderr == (f"error: {path}: entry 1 (id bad): conversations[0] is from 'gpt' "
                          "where 'human' was expected (turns must alternate human, gpt, ...)\n")


def read_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_vqav2_scorer_and_predictions_on_a_vqa_file(tmp_path):
    """Ten human answers a question, images found through --image-folder: the right answer
    given by 2 of 10 humans scores 0.6, "five" matches the humans' "5" once normalised."""
    rows = [
        {"image": "images/sample0.png", "question": "what shape is the purple object?",
         "answers": ["square"] * 2 + ["circle"] * 8, "answer_type": "other"},
        {"image": "images/sample2.png", "question": "how many objects are there?",
         "answers": [{"answer": "5"}] * 4 + [{"answer": "six"}] * 6, "answer_type": "number"},
        {"image": "images/sample3.jpg", "question": "is there a yellow circle?",
         "answers": ["yes"] * 10, "answer_type": "yes/no"},
    ]
    path = tmp_path / "vqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    predictions = tmp_path / "predictions.jsonl"
    out = run_eval("--dataset", path, "--image-folder", SAMPLES_DIR, "--scorer", "vqav2",
                   "--predictions", predictions, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    lines = read_lines(predictions)
    assert [p["question"] for p in lines] == [r["question"] for r in rows]
    assert [p["prediction"] for p in lines] == ["square", "five", "yes"]
    assert [p["score"] for p in lines] == pytest.approx([0.6, 1.0, 1.0])
    assert all(p["score"] == vqav2_score(p["prediction"], p["accepted"]) for p in lines)
    assert lines[1]["expected"] == "six" and lines[1]["accepted"][:1] == ["5"]
    assert result["format"] == "vqa" and result["scorer"] == "vqav2" and result["n"] == 3
    assert result["accuracy"] == pytest.approx(2.6 / 3)
    assert set(result["by_family"]) == {"other", "number", "yes/no"}
    assert result["warnings"] == [] and result["errors"] == []


def test_llava_multi_turn_file_every_gpt_turn_is_a_question(tmp_path):
    """A LLaVA instruction file on the shipped samples: each gpt turn one question, in order,
    asked after the earlier turns; the text-only entry skipped; one reference answer each, so
    the vqav2 rule (made for ten) scores 0 and says so."""
    def turns(*pairs):
        return [m for q, a in pairs for m in ({"from": "human", "value": q},
                                              {"from": "gpt", "value": a})]

    entries = [
        {"id": "s0", "image": "images/sample0.png", "conversations": turns(
            ("<image>\nwhat shape is the purple object?", "square"),
            ("what color is the triangle?", "red"))},
        {"id": "text", "conversations": turns(("hello", "hi"))},
        {"id": "s1", "image": "images/sample1.png", "conversations": turns(
            ("where is the green object?\n<image>", "bottom"),
            ("is there a orange triangle?", "yes"))},
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(entries))
    predictions = tmp_path / "p.jsonl"
    out = run_eval("--dataset", path, "--image-folder", SAMPLES_DIR, "--scorer", "vqav2",
                   "--predictions", predictions, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    lines = read_lines(predictions)
    assert [(p["where"].split(": ", 1)[1], p["turn"]) for p in lines] == [
        ("entry 0 (id s0)", 0), ("entry 0 (id s0)", 1), ("entry 2 (id s1)", 0),
        ("entry 2 (id s1)", 1)]
    assert [p["prediction"] for p in lines] == ["square", "red", "bottom", "yes"]
    assert [p["score"] for p in lines] == [0.0] * 4
    assert result["format"] == "llava" and result["n"] == 4 and result["images"] == 2
    assert result["skipped_text_only"] == 1 and "1 text-only entries" in out.stderr
    assert "fewer than 10 human answers" in out.stderr and len(result["warnings"]) == 1


class RecordingAnswerer:
    """Stands in for the model: records what each batch asks and answers "yes"."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, questions, histories, max_new_tokens):
        self.calls.append((len(images), list(questions), list(histories), max_new_tokens))
        return ["yes"] * len(questions)


def test_questions_histories_suffix_and_batches(tmp_path, monkeypatch):
    answerer = RecordingAnswerer()
    monkeypatch.setattr(evaluate_module, "make_answerer", lambda *a: answerer)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    convo = [{"from": "human", "value": "<image>\nq1"}, {"from": "gpt", "value": "a1"},
             {"from": "human", "value": "q2"}, {"from": "gpt", "value": "yes"},
             {"from": "human", "value": "q3"}, {"from": "gpt", "value": "a3"}]
    path = tmp_path / "l.json"
    path.write_text(json.dumps([
        {"id": 1, "image": str(SAMPLES_DIR / "images/sample0.png"), "conversations": convo},
        {"id": 2, "image": "broken.png", "conversations": convo[:4]}]))
    predictions = tmp_path / "p.jsonl"
    result = evaluate_module.evaluate(Path("unused"), path, batch_size=2, progress=False,
                                      prompt_suffix=" Short.", max_new_tokens=3,
                                      predictions_path=predictions)
    suffix = " Short."
    assert answerer.calls == [
        (2, ["<image>\nq1" + suffix, "q2" + suffix], [(), (("<image>\nq1", "a1"),)], 3),
        (1, ["q3" + suffix], [(("<image>\nq1", "a1"), ("q2", "yes"))], 3),
    ]  # the broken image's two questions are never asked
    lines = read_lines(predictions)
    assert [p["score"] for p in lines] == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert [p["prediction"] for p in lines[3:]] == [None, None] and "error" in lines[3]
    assert len(result["errors"]) == 1 and result["errors"][0]["where"].endswith("(id 2)")
    assert result["n"] == 5 and result["accuracy"] == pytest.approx(1 / 5)
    assert result["predictions"] == lines


def test_limit_counts_questions_not_conversations(tmp_path, monkeypatch):
    answerer = RecordingAnswerer()
    monkeypatch.setattr(evaluate_module, "make_answerer", lambda *a: answerer)
    path = tmp_path / "l.json"
    path.write_text(json.dumps([{"id": 1, "image": str(SAMPLES_DIR / "images/sample0.png"),
                                 "conversations": [{"from": "human", "value": "q"},
                                                   {"from": "gpt", "value": "yes"}] * 3}]))
    result = evaluate_module.evaluate(Path("unused"), path, limit=2, progress=False)
    assert result["n"] == 2 and result["accuracy"] == 1.0


def test_an_unwritable_predictions_file_fails_before_the_run(tmp_path):
    out = run_eval("--dataset", SAMPLES_DIR / "questions.jsonl",
                   "--predictions", tmp_path / "no" / "such" / "p.jsonl")
    assert out.returncode == 2 and "cannot be written" in out.stderr
