"""A local lmms-eval task from a JSON Lines VQA file in the ShapesVQA format (``image``,
``question``, ``answer`` string or list, optional ``family``): ``alignedvq-lmms-task --dataset
Q.jsonl --out DIR`` writes DIR/NAME.yaml and DIR/docs.jsonl; then
``lmms-eval --include_path DIR --tasks NAME ...``.

Why a generated folder rather than a YAML alone: lmms-eval resolves a relative ``data_files``
against the YAML's folder, and the rows' image paths are relative to the dataset's folder, so
docs.jsonl is the dataset with absolute image paths and ``answers`` always a list (a column
mixing strings and lists does not load as one datasets column). The scoring functions live
here, in the installed package, and the YAML names them by module path."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_TASK = "alignedvq_shapes_vqa"
METRIC = "exact_match_accuracy"

TASK_YAML = """\
# Written by alignedvq-lmms-task from {dataset}
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
output_type: generate_until
doc_to_visual: !function alignedvq_lmms.task.doc_to_visual
doc_to_text: !function alignedvq_lmms.task.doc_to_text
doc_to_target: answer
process_results: !function alignedvq_lmms.task.process_results
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  do_sample: false
metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""


def normalize_answer(text: str) -> str:
    """Lower-case, strip surrounding white space and one trailing full stop: ShapesVQA's rule,
    the same as ``alignedvq.evaluation.answers`` (copied: this package imports nothing of the
    project)."""
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def doc_to_visual(doc: dict) -> list:
    from PIL import Image

    image = Image.open(doc["image"])
    image.load()  # reads the pixels and closes the file; ``filename`` stays for the adapter
    return [image]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def process_results(doc: dict, results: list[str]) -> dict:
    prediction = normalize_answer(results[0])
    hit = prediction in {normalize_answer(a) for a in doc["answers"]}
    return {METRIC: 1.0 if hit else 0.0}


def write_task(dataset: Path, out: Path, name: str = DEFAULT_TASK,
               max_new_tokens: int = 8) -> Path:
    """DIR/NAME.yaml and DIR/docs.jsonl for ``dataset``; returns the YAML's path."""
    dataset = dataset.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with dataset.open(encoding="utf-8") as src, (out / "docs.jsonl").open("w") as dst:
        for lineno, line in enumerate(src, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in ("image", "question", "answer") if k not in row]
            if missing:
                raise ValueError(f"{dataset}:{lineno}: missing field(s) {', '.join(missing)}")
            answers = [row["answer"]] if isinstance(row["answer"], str) else list(row["answer"])
            dst.write(json.dumps({"image": str(dataset.parent / row["image"]),
                                  "question": row["question"], "answer": answers[0],
                                  "answers": answers,
                                  "family": row.get("family", "all")}) + "\n")
    yaml_path = out / f"{name}.yaml"
    yaml_path.write_text(TASK_YAML.format(dataset=dataset, name=name, metric=METRIC,
                                          max_new_tokens=max_new_tokens))
    return yaml_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="alignedvq-lmms-task", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="JSON Lines VQA file")
    p.add_argument("--out", required=True, type=Path, help="task folder for --include_path")
    p.add_argument("--name", default=DEFAULT_TASK, help="the task's name for --tasks")
    p.add_argument("--max-new-tokens", type=int, default=8,
                   help="tokens generated per answer (alignedvq eval: 8)")
    args = p.parse_args(argv)
    try:
        path = write_task(args.dataset, args.out, args.name, args.max_new_tokens)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}: lmms-eval --include_path {args.out} --tasks {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
