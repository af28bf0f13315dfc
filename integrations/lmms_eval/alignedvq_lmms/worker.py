"""The client side of ``alignedvq answer-worker`` (protocol 1, alignedvq/answer_worker.py):
starts the worker from the project's environment and exchanges JSON lines with it. Standard
library only, so it runs in any environment."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass

PROTOCOL_VERSION = 1
# Flags forwarded to the worker: model_args name -> worker flag.
WORKER_FLAGS = {"model": "--model", "mode": "--mode", "codec": "--codec",
                "split_layer": "--split-layer", "device": "--device", "server": "--server",
                "timeout": "--timeout", "concurrency": "--concurrency"}


class WorkerError(RuntimeError):
    """The worker could not start, died, or refused a request; the message says which."""


@dataclass
class Answer:
    answer: str | None
    payload_bytes: int | None
    error: str | None = None


def worker_command(python: str, options: dict) -> list[str]:
    """``PYTHON -m alignedvq.answer_worker --flag value ...`` for the options that are set.
    Through ``-m``, not the ``alignedvq`` console script, so any interpreter that can import
    the project works (a venv, a checkout on PYTHONPATH)."""
    cmd = [python, "-m", "alignedvq.answer_worker"]
    for key, flag in WORKER_FLAGS.items():
        value = options.get(key)
        if value is not None and value != "":
            cmd += [flag, str(value)]
    return cmd


class AnswerWorker:
    """One long-lived worker process. Its stderr goes to a log file, whose tail is quoted in
    the error when the worker fails (transformers' loading messages would otherwise flood
    lmms-eval's output)."""

    def __init__(self, command: list[str], env: dict | None = None):
        self.command = command
        self.log = tempfile.NamedTemporaryFile("w+", prefix="alignedvq-worker-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1,
                                     env={**os.environ, **(env or {})})
        self._ids = itertools.count(1)
        self.ready = self._read_line()
        if not self.ready.get("ready") or self.ready.get("protocol") != PROTOCOL_VERSION:
            raise WorkerError(f"unexpected first line from the worker: {self.ready}")

    def _failure(self, what: str) -> WorkerError:
        code = self.proc.wait(timeout=30)
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        return WorkerError(f"{what} (exit code {code}; command: {' '.join(self.command)}); "
                           f"its stderr ends:\n{tail}")

    def _read_line(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise self._failure("the answer worker exited")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise WorkerError(f"the answer worker wrote a line that is not JSON: {line!r}")

    def answer(self, items: list[tuple[str, str]], max_new_tokens: int) -> list[Answer]:
        """Answers for (image path, question) pairs, in order, answered as one batch."""
        request_id = next(self._ids)
        request = {"id": request_id, "max_new_tokens": max_new_tokens,
                   "batch": [{"image": image, "question": q} for image, q in items]}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._failure("the answer worker exited") from None
        response = self._read_line()
        if "error" in response:
            raise WorkerError(f"the answer worker refused a request: {response['error']}")
        if response.get("id") != request_id or len(response["results"]) != len(items):
            raise WorkerError(f"the answer worker's response does not match request "
                              f"{request_id}: {response}")
        return [Answer(r.get("answer"), r.get("payload_bytes"), r.get("error"))
                for r in response["results"]]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # end of input: the worker exits by itself
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)
