"""``edge-agent --chat``: a conversation about one image. The first question sends the image as
the mode says (``--mode auto``: by the path auto picks for it); every later one sends only the
question, the earlier turns and the image handle the server returned, through the same RPC
(AnswerFromImage after an upload, AnswerFromCodes otherwise, as a header alone).

The client keeps the conversation (protos/README.md, "Conversations"): it sends the earlier
turns with each question, at most the server's ``max_history_turns`` (the oldest are dropped).
The server keeps only the image, for a while: when it no longer knows the handle (expired,
evicted, another replica, a restart: FAILED_PRECONDITION), the image is sent again with the
conversation so far, once, and the conversation goes on with the new handle.

Questions come from ``--question`` (the first, when given) and then standard input, one per
line (a ``> `` prompt on standard error when it is a terminal); blank lines are skipped, end of
input ends the conversation. Each answer streams as it comes; with ``--json`` one JSON object
per answer instead.
"""

from __future__ import annotations

import json
import sys
from typing import Callable, Iterator, TextIO

import grpc

from common.wire.request_ids import METADATA_KEY, new_request_id
from edge_agent.client import Result, ask_follow_up, server_info


def questions(first: str | None, lines: TextIO, prompt: Callable[[], None]) -> Iterator[str]:
    if first is not None and first.strip():
        yield first
    while True:
        prompt()
        line = lines.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")


class Chat:
    """``ask_with_image(question, history) -> Result``: the session's own first-turn path (the
    image crosses); ``session``: the edge-agent session (stub, metadata, retry, generation)."""

    def __init__(self, session, ask_with_image: Callable[..., Result],
                 out: TextIO | None = None, err: TextIO | None = None):
        self.session, self.ask_with_image = session, ask_with_image
        # The streams of the moment (a caller may have redirected them), not of import time.
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.json = session.args.json
        self.history: list[tuple[str, str]] = []
        self.handle = b""
        self.upload = False  # the first turn went by AnswerFromImage
        s = session
        info = server_info(s.stub, metadata=s.metadata, retry=s.retry)
        self.max_turns = info.max_history_turns

    def _stream(self, text: str) -> None:
        if not self.json:
            print(text, end="", file=self.out, flush=True)

    def _recent(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.history[-self.max_turns:]) if self.max_turns else ()

    def ask(self, question: str) -> Result:
        history = self._recent()
        if self.handle:
            s = self.session
            try:
                return ask_follow_up(s.stub, self.handle, question, history, s.generation,
                                     self.upload, self._stream, metadata=s.metadata,
                                     retry=s.retry)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                print(f"edge-agent: the server no longer has the image ({e.details()}); "
                      f"sending it again", file=self.err)
        result = self.ask_with_image(question, history, self._stream)
        self.upload = result.mode == "image"
        return result

    def run(self, first: str | None, lines: TextIO) -> int:
        tty = lines.isatty()

        def prompt():
            if tty:
                print("> ", end="", file=self.err, flush=True)

        for turn, question in enumerate(questions(first, lines, prompt), 1):
            self.session.metadata = self._metadata(turn)
            result = self.ask(question)
            self.handle = result.image_handle  # empty: the server keeps no images
            self.history.append((question, result.answer))
            self.report(turn, result)
        return 0

    def _metadata(self, turn: int) -> tuple:
        """Each turn is a request of its own, logged under its own id: ``--request-id ID``
        gives ``ID.1``, ``ID.2``, ...; without it each turn gets a fresh one."""
        given = self.session.args.request_id
        suffix = f".{turn}"
        request_id = given[:128 - len(suffix)] + suffix if given else new_request_id()
        return (*((k, v) for k, v in self.session.metadata if k != METADATA_KEY),
                (METADATA_KEY, request_id))

    def report(self, turn: int, result: Result) -> None:
        if self.json:
            print(json.dumps({"turn": turn, **result.as_json()}), file=self.out, flush=True)
            return
        print(file=self.out, flush=True)
        ttft = f"{result.ttft_ms:.0f} ms" if result.ttft_ms is not None else "-"
        print(f"[turn {turn}, {result.mode}: {result.payload_bytes} B sent ({result.image_bytes} "
              f"B of image), first token {ttft}, {result.cached_tokens} cached tokens, total "
              f"{result.total_ms:.0f} ms]", file=self.err, flush=True)
