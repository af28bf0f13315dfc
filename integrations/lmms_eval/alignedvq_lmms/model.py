"""``lmms-eval --model alignedvq``: answers every request through the alignedvq split, by way of
one ``alignedvq answer-worker`` process started from the project's environment.

model_args (comma-separated, as lmms-eval takes them; docs/lmms_eval.md):
  python=PATH         the project environment's interpreter (default: $ALIGNEDVQ_PYTHON)
  model=DIR           local LLaVA checkpoint (default: the embedded one)
  mode=MODE           alignedvq (default), fp16, int8, image or original
  codec=DIR           codec folder for mode=alignedvq (default: the shipped one)
  split_layer=N       vision block whose output crosses
  device=DEV          cpu or cuda[:N] (lmms-eval's --device sets it too)
  server=HOST:PORT    send the codes to a running cloud-server instead of answering in process
  timeout=S, concurrency=N   with server=: per-RPC wait, RPCs in flight
lmms-eval's --batch_size is the number of questions the worker answers per generate() call.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from loguru import logger
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from alignedvq_lmms.worker import AnswerWorker, worker_command

DEFAULT_MAX_NEW_TOKENS = 8  # the worker's default, what `alignedvq eval` generates


def image_path(visual, scratch: Path, name: str) -> str:
    """A file the worker can open for one visual. A path, or a PIL image opened from a file
    (its ``filename``), goes as that file: the worker opens it under the project's image policy
    exactly as ``alignedvq eval`` does. Any other PIL image is written losslessly as PNG."""
    if isinstance(visual, (str, Path)):
        return str(visual)
    filename = getattr(visual, "filename", "")
    if filename and os.path.isfile(filename):
        return filename
    if hasattr(visual, "save"):
        path = scratch / f"{name}.png"
        visual.save(path, format="PNG")
        return str(path)
    raise TypeError(f"alignedvq answers about images; got a visual of type {type(visual)}")


def cut_at_stop(text: str, until: list[str]) -> str:
    """The answer up to the first stop sequence, as lmms-eval's ``until`` asks."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class AlignedVQSplit(lmms):
    is_simple = True

    def __init__(self, python: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, **worker_options) -> None:
        super().__init__()
        python = python or os.environ.get("ALIGNEDVQ_PYTHON")
        if not python:
            raise ValueError("alignedvq: say which Python runs the project: model_args "
                             "python=/path/to/alignedvq/.venv/bin/python, or set "
                             "ALIGNEDVQ_PYTHON")
        unknown = set(worker_options) - {"model", "mode", "codec", "split_layer", "device",
                                         "server", "timeout", "concurrency"}
        if unknown:
            raise ValueError(f"alignedvq: unknown model_args {', '.join(sorted(unknown))}")
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1
        self.worker = AnswerWorker(worker_command(python, worker_options))
        self.scratch = tempfile.TemporaryDirectory(prefix="alignedvq-lmms-")
        self.payload_bytes: list[int] = []
        logger.info(f"alignedvq: worker ready: {self.worker.ready}")

    def _visual_path(self, request: Instance) -> str:
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if len(visuals) != 1:
            raise ValueError(f"alignedvq answers about exactly one image per question; "
                             f"{task} doc {doc_id} has {len(visuals)}")
        return image_path(visuals[0], Path(self.scratch.name), f"{task}-{split}-{doc_id}")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str] = []
        # In lmms-eval's order (a result per request, in order); consecutive requests with the
        # same token budget share a batch.
        start = 0
        while start < len(requests):
            budget = self._budget(requests[start])
            end = start
            while (end < len(requests) and end - start < self.batch_size
                   and self._budget(requests[end]) == budget):
                end += 1
            answers += self._answer(requests[start:end], budget)
            start = end
        if self.payload_bytes:
            mean = sum(self.payload_bytes) / len(self.payload_bytes)
            logger.info(f"alignedvq: {len(self.payload_bytes)} images sent, "
                        f"{mean:.1f} B per image on the wire")
        return answers

    @staticmethod
    def _budget(request: Instance) -> int:
        gen_kwargs = request.args[1] or {}
        return int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)

    def _answer(self, batch: list[Instance], budget: int) -> list[str]:
        items = [(self._visual_path(r), r.args[0]) for r in batch]
        texts = []
        for request, result in zip(batch, self.worker.answer(items, budget)):
            if result.error is not None:
                # lmms-eval has no per-request error: an empty answer scores as wrong, as an
                # unloadable image does in `alignedvq eval`.
                logger.warning(f"alignedvq: {result.error}")
                texts.append("")
                continue
            if result.payload_bytes is not None:
                self.payload_bytes.append(result.payload_bytes)
            until = request.args[1].get("until") or []
            texts.append(cut_at_stop(result.answer, [until] if isinstance(until, str)
                                     else list(until)))
        return texts

    def loglikelihood(self, requests):
        raise NotImplementedError("alignedvq: loglikelihood is not offered: the split serves "
                                  "greedy answers (output_type: generate_until tasks only)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("alignedvq: multi-round generation is not offered")

    def clean(self):
        self.worker.close()
        self.scratch.cleanup()
        super().clean()
