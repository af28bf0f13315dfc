"""The lmms-eval plug-in (integrations/lmms_eval/, docs/lmms_eval.md) and the process it talks
to, ``alignedvq answer-worker``: the protocol in process, the worker as a real process (in
process and over gRPC to a cloud-server), and `lmms-eval --model alignedvq` end to end from its
own environment (.venv-lmms, `make lmms-eval-env`), which skips where that is not built."""

import glob
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignedvq.answer_worker import RequestError, parse_request, serve
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, REPO_ROOT

LMMS_VENV = Path(os.environ.get("ALIGNEDVQ_LMMS_VENV", REPO_ROOT / ".venv-lmms"))
NEEDS_LMMS_VENV = pytest.mark.skipif(
    not (LMMS_VENV / "bin" / "lmms-eval").exists(),
    reason=f"lmms-eval's environment {LMMS_VENV} is not built (make lmms-eval-env)")
QUESTIONS = 8
# lmms-eval's --batch_size: all QUESTIONS in one generate() call, as `alignedvq eval
# --batch-size 8` answers them, so the two batches pad alike and the answers must be equal.
BATCH = 8


# --- the protocol, in process ------------------------------------------------------------------

class EchoAnswerer:
    def __init__(self):
        self.budgets = []

    def __call__(self, images, questions, max_new_tokens):
        self.budgets.append(max_new_tokens)
        return [q.upper() for q in questions], [len(q) for q in questions]


def test_serve_answers_in_order_and_isolates_bad_items(tmp_path):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    lines = [json.dumps({"id": "r1", "max_new_tokens": 3, "batch": [
                 {"image": str(image), "question": "one?"},
                 {"image": str(tmp_path / "missing.png"), "question": "two?"},
                 {"image": str(image), "question": "three?"}]}),
             "not json", "",
             json.dumps({"id": 7, "batch": [{"image": 1, "question": "x"}]})]
    out = io.StringIO()
    answerer = EchoAnswerer()
    serve(answerer, io.StringIO("\n".join(lines) + "\n"), out)
    first, bad_json, bad_item = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first["id"] == "r1"
    assert first["results"][0] == {"answer": "ONE?", "payload_bytes": 4}
    assert "missing.png" in first["results"][1]["error"]
    assert first["results"][2] == {"answer": "THREE?", "payload_bytes": 6}
    assert answerer.budgets == [3]
    assert bad_json["id"] is None and "not JSON" in bad_json["error"]
    assert "batch[0]" in bad_item["error"]


@pytest.mark.parametrize("line", ['{"batch": {}}', '[1]', '{"batch": [], "max_new_tokens": 0}',
                                  '{"batch": [], "max_new_tokens": true}'])
def test_malformed_requests_are_refused(line):
    with pytest.raises(RequestError):
        parse_request(line)


# --- real processes ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    from alignedvq.data.shapes_vqa import write_dataset

    return write_dataset(tmp_path_factory.mktemp("shapes"), 16, seed=2, progress=False)


@pytest.fixture(scope="module")
def eval_answers(split) -> list[str]:
    """`alignedvq eval`'s answers (its evaluate(), which --json reports without them)."""
    from alignedvq.evaluation.evaluate import evaluate

    result = evaluate(DEFAULT_MODEL_DIR, split, limit=QUESTIONS, batch_size=BATCH,
                      progress=False, mode="alignedvq", codec_dir=DEFAULT_CODEC_DIR)
    return [p["prediction"] for p in result["predictions"]]


def worker_answers(split: Path, *flags: str) -> tuple[dict, list[dict]]:
    rows = [json.loads(line) for line in split.read_text().splitlines()][:QUESTIONS]
    request = {"id": 1, "batch": [{"image": str(split.parent / r["image"]),
                                   "question": r["question"]} for r in rows]}
    out = subprocess.run([sys.executable, "-m", "alignedvq.answer_worker", *flags],
                         input=json.dumps(request) + "\n", capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ready, response = [json.loads(line) for line in out.stdout.splitlines()]
    return ready, response["results"]


@pytest.mark.integration
def test_worker_over_grpc_to_a_cloud_server(split, eval_answers, default_server):
    _, results = worker_answers(split, "--mode", "alignedvq", "--server", default_server.address)
    # The server batches the concurrent RPCs its own way; greedy answers of this model agree.
    agree = sum(r["answer"] == a for r, a in zip(results, eval_answers))
    assert agree >= QUESTIONS - 1, (results, eval_answers)
    # Header with fingerprints and packed indices, as in process; the question rides along.
    assert all(r["payload_bytes"] > 130 for r in results)


# --- lmms-eval end to end ----------------------------------------------------------------------

@NEEDS_LMMS_VENV
@pytest.mark.integration
def test_lmms_eval_runs_a_local_task_through_the_split(split, eval_answers, tmp_path):
    task_dir, out_dir = tmp_path / "task", tmp_path / "out"
    bin_dir = LMMS_VENV / "bin"
    made = subprocess.run([str(bin_dir / "alignedvq-lmms-task"), "--dataset", str(split),
                           "--out", str(task_dir)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    # No model hub: the task's data is a local file, the model a local folder.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "ALIGNEDVQ_PYTHON": sys.executable}
    run = subprocess.run(
        [str(bin_dir / "lmms-eval"), "--model", "alignedvq",
         "--model_args", f"model={DEFAULT_MODEL_DIR},mode=alignedvq,codec={DEFAULT_CODEC_DIR}",
         "--tasks", "alignedvq_shapes_vqa", "--include_path", str(task_dir),
         "--limit", str(QUESTIONS), "--batch_size", str(BATCH),
         "--output_path", str(out_dir), "--log_samples"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    log = run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 0, log
    [results_file] = glob.glob(str(out_dir / "**" / "*_results.json"), recursive=True)
    accuracy = json.loads(Path(results_file).read_text())["results"][
        "alignedvq_shapes_vqa"]["exact_match_accuracy,none"]
    assert accuracy >= 6 / QUESTIONS, log
    [samples_file] = glob.glob(str(out_dir / "**" / "*_samples_*.jsonl"), recursive=True)
    samples = sorted((json.loads(line) for line in Path(samples_file).read_text().splitlines()),
                     key=lambda s: s["doc_id"])
    answers = [s["filtered_resps"] if isinstance(s["filtered_resps"], str)
               else s["filtered_resps"][0] for s in samples]
    assert answers == eval_answers
    assert "130.0 B per image on the wire" in run.stderr + run.stdout
