"""``alignedvq eval`` as a user runs it, on real files: the command's main in this process,
and the real console script where the process is the point (exit code, stderr)."""

import json
import subprocess

import pytest
from conftest import cli, run_in_process

from alignedvq.cli import main as alignedvq
from alignedvq.data.shapes_vqa import FAMILIES, write_dataset


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
    assert sorted(e["image"] for e in result["errors"]) == ["broken.png", "missing.png"]
    assert result["accuracy"] <= 3 / 5


@pytest.mark.integration
def test_malformed_file_is_a_clear_error(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"image": "a.png", "question": "x?"}\n')
    out = subprocess.run(cli("alignedvq") + ["eval", "--dataset", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "missing field(s) answer" in out.stderr
