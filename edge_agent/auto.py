"""``edge-agent --mode auto``: per request, the path with the lowest predicted latency: upload
the image, or send codes at one of the split points the server serves and this edge has an
encoder for (edge_agent/latency_model.py says how it predicts).

One request, as a one-shot ``edge-agent`` makes it:

1. The server's split points: GetServerInfo, kept in the cache file (asked again, and the
   request retried once, when the server refuses what the cache said: it was restarted with
   other codecs). So a request makes one RPC, as a fixed path's does.
2. The JPEG the upload would send (its size and its encoding time: the upload's edge compute).
3. The link, when nothing fresh is known of it: two ProbeLink calls (empty, then the JPEG's
   size) give the round trip and the uplink's throughput.
4. Each codes path never profiled on this edge (model, runtime, device) runs once on this very
   image: its time is the profile, and its chunks are kept for the request if it wins.
5. Choose, ask, and learn from the answer: the call's own timings update the edge's, the
   link's and the server's terms. All of it is written back to the cache file.

The cache (``--auto-cache``, default ``~/.cache/alignedvq/edge-auto.json``) holds the edge's
profile per encoder and, per server address, its info, the link and its time per path.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Callable

from alignedvq.v1 import inference_pb2 as pb
from common.imaging.policy import jpeg_baseline
from common.wire.messages import codes_request_messages, fingerprint_bytes
from edge_agent.client import (
    IncompatibleServer,
    Result,
    ask_with_codes,
    ask_with_image,
    served_points,
    server_info,
    with_turn,
)
from edge_agent.encoder import EdgeEncoder
from edge_agent.latency_model import LatencyModel, Path, Prediction

IMAGE = Path(None)


def default_cache_path() -> FilePath:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return FilePath(base) / "alignedvq" / "edge-auto.json"


class AutoCache:
    """The cache file: ``{"edges": {encoder key: {"edge_ms": ...}}, "servers": {address: {"info":
    base64 GetServerInfoResponse, "link": ..., "server_ms": ...}}}``. A file that cannot be read
    is started afresh (it only ever holds measurements)."""

    def __init__(self, path: FilePath | None):
        self.path = path
        self.data = {"edges": {}, "servers": {}}
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text())
                self.data = {"edges": dict(loaded["edges"]), "servers": dict(loaded["servers"])}
            except (ValueError, KeyError, TypeError):
                print(f"edge-agent: ignoring the unreadable cache {path}", file=sys.stderr)

    def info(self, server: str) -> pb.GetServerInfoResponse | None:
        encoded = self.data["servers"].get(server, {}).get("info")
        return pb.GetServerInfoResponse.FromString(base64.b64decode(encoded)) if encoded else None

    def model(self, server: str, edge_keys: dict[str, str]) -> LatencyModel:
        """The server's link and times with this edge's profile; ``edge_keys``: path name ->
        encoder key."""
        model = LatencyModel.from_json(self.data["servers"].get(server, {}))
        edges = self.data["edges"]
        model.edge_ms = {name: edges[key] for name, key in edge_keys.items() if key in edges}
        return model

    def store(self, server: str, info: pb.GetServerInfoResponse, model: LatencyModel,
              edge_keys: dict[str, str]) -> None:
        state = model.to_json()
        for name, key in edge_keys.items():
            if name in model.edge_ms:
                self.data["edges"][key] = model.edge_ms[name]
        del state["edge_ms"]
        state["info"] = base64.b64encode(info.SerializeToString()).decode()
        self.data["servers"][server] = state
        if self.path is None:
            return
        try:
            # Atomic: two agents finishing at once leave one whole file, never a torn one.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".edge-auto-")
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=1)
            os.replace(tmp, self.path)
        except OSError as e:
            # A read-only home (a container, a locked-down device) must not cost the answer:
            # the measurements then last as long as this process.
            print(f"edge-agent: cannot write the cache {self.path} ({e.strerror or e}); "
                  f"keeping what was measured for this process only (--auto-cache FILE "
                  f"elsewhere, or none)", file=sys.stderr)
            self.path = None


@dataclass
class EdgeCodec:
    """One encoder the edge can run, known from its files before it is loaded."""

    split_layer: int
    vision_fingerprint: str
    codec_fingerprint: str
    tokens: int
    bits: int
    stages: int
    key: str                             # its profile's key in the cache
    load: Callable[[], EdgeEncoder]      # the encoder, loaded on first use

    def request_bytes(self, question: str, max_new_tokens: int,
                      generation: pb.GenerationParams | None = None, history=()) -> int:
        """What its request will weigh, from its geometry alone (zero bytes stand in for the
        indices: the same size), so no encoder is loaded to know it."""
        chunk = bytes(-(-self.tokens * self.bits // 8))
        messages = codes_request_messages(
            pb.FEATURE_ENCODING_ALIGNEDVQ, self.tokens, self.bits, self.stages,
            [chunk] * self.stages, self.vision_fingerprint, self.codec_fingerprint, question,
            max_new_tokens)
        with_turn(messages[0].header, generation, history)
        return sum(m.ByteSize() for m in messages)


@dataclass
class AutoChoice:
    """What ``--json`` reports beside the result: the path taken and why."""

    chosen: Prediction
    predictions: list[Prediction]
    probed: bool
    profiled: list[str]

    def as_json(self) -> dict:
        return {"path": self.chosen.path.name, "predicted_ms": round(self.chosen.total_ms, 2),
                "predictions": [p.as_json() for p in self.predictions], "probed": self.probed,
                "profiled": self.profiled}


def probe_link(stub, model: LatencyModel, padded_bytes: int, metadata, retry) -> None:
    """Each probe twice, the faster counting: the first empty one may pay for the connection,
    and the first padded one for TCP's window opening after small requests (a probe that met a
    closed window measured a 10 Mbit/s link at 1.15, and the chooser then never uploaded:
    benchmarks/auto_latency.md)."""
    def timed(size: int) -> float:
        request = pb.ProbeLinkRequest(padding=bytes(size))
        started = time.perf_counter()
        retry(lambda seconds: stub.ProbeLink(request, timeout=seconds, metadata=metadata))
        return (time.perf_counter() - started) * 1000

    empty = min(timed(0), timed(0))
    padded = min(timed(padded_bytes), timed(padded_bytes))
    model.link.probed(empty, padded, padded_bytes, now=time.time())


class AutoAsker:
    """Asks one question by the predicted-fastest path (see the module's docstring)."""

    def __init__(self, stub, server: str, codecs: list[EdgeCodec], cache: AutoCache,
                 metadata=None, retry=None, jpeg_quality: int = 90):
        self.stub, self.server, self.codecs, self.cache = stub, server, codecs, cache
        self.metadata, self.retry, self.jpeg_quality = metadata, retry, jpeg_quality
        self.encoders: dict[int, EdgeEncoder] = {}
        self.warm: set[Path] = {IMAGE}  # paths whose encoder has run in this process

    def _info(self, refresh: bool) -> pb.GetServerInfoResponse:
        info = None if refresh else self.cache.info(self.server)
        return info or server_info(self.stub, metadata=self.metadata, retry=self.retry)

    def _usable(self, info) -> dict[Path, EdgeCodec]:
        """The codes paths: split points the server serves with this edge's weights and codec."""
        served = {(p.vision_fingerprint, p.codec_fingerprint): p.split_layer
                  for p in served_points(info)}
        usable = {}
        for codec in self.codecs:
            key = (fingerprint_bytes(codec.vision_fingerprint),
                   fingerprint_bytes(codec.codec_fingerprint))
            if key in served:
                usable[Path(served[key])] = codec
        return usable

    def _encoder(self, codec: EdgeCodec) -> EdgeEncoder:
        if codec.split_layer not in self.encoders:
            self.encoders[codec.split_layer] = codec.load()
        return self.encoders[codec.split_layer]

    def ask(self, image, question: str, max_new_tokens: int = 0,
            on_delta=lambda text: None, generation: pb.GenerationParams | None = None,
            history=()) -> tuple[Result, AutoChoice]:
        """``generation`` (sampling too) replaces ``max_new_tokens``; ``history``: earlier
        (question, answer) turns about this image (edge-agent --chat resending it)."""
        turn = dict(generation=generation, history=history)
        try:
            return self._ask(image, question, max_new_tokens, on_delta, False, turn)
        except IncompatibleServer:
            # The cached info said the server decodes a split point it no longer does.
            return self._ask(image, question, max_new_tokens, on_delta, True, turn)

    def _ask(self, image, question, max_new_tokens, on_delta, refresh: bool, turn: dict):
        info = self._info(refresh)
        usable = self._usable(info)
        keys = {path.name: codec.key for path, codec in usable.items()}
        model = self.cache.model(self.server, keys)

        started = time.perf_counter()
        jpeg = jpeg_baseline(image, info.image_size, self.jpeg_quality)
        model.observe_edge(IMAGE, (time.perf_counter() - started) * 1000)
        upload = with_turn(pb.AnswerFromImageRequest(image=jpeg, question=question, generation=(
            pb.GenerationParams(max_new_tokens=max_new_tokens) if max_new_tokens else None)),
            **turn)
        payloads = {IMAGE: upload.ByteSize()}
        for path, codec in usable.items():
            payloads[path] = codec.request_bytes(question, max_new_tokens, **turn)

        probed = not model.link.known(now=time.time())
        if probed:
            probe_link(self.stub, model, payloads[IMAGE], self.metadata, self.retry)
        ready: dict[Path, tuple[list[bytes], float]] = {}
        profiled = []
        for path in model.unprofiled(list(usable)):
            # Twice: the first run pays the encoder's one-time start-up (kernels, allocator),
            # the second is what the path costs each time.
            encoder = self._encoder(usable[path])
            encoder.chunks([image])
            t = time.perf_counter()
            chunks = encoder.chunks([image])[0]
            ready[path] = chunks, (time.perf_counter() - t) * 1000
            model.observe_edge(path, ready[path][1])
            self.warm.add(path)
            profiled.append(path.name)
        chosen, predictions = model.choose(payloads)

        if chosen.path == IMAGE:
            result = ask_with_image(self.stub, image, question, info.image_size,
                                    self.jpeg_quality, max_new_tokens, on_delta,
                                    metadata=self.metadata, retry=self.retry, jpeg=jpeg,
                                    jpeg_ms=model.edge_ms[IMAGE.name], **turn)
        else:
            chunks, edge_ms = ready.get(chosen.path, (None, None))
            result = ask_with_codes(self.stub, self._encoder(usable[chosen.path]), image,
                                    question, max_new_tokens, on_delta, metadata=self.metadata,
                                    retry=self.retry, chunks=chunks, edge_ms=edge_ms, **turn)
        model.observe_call(chosen.path, result.payload_bytes, result.edge_ms, result.cloud_ms,
                           result.total_ms, edge_warm=chosen.path in self.warm)
        self.warm.add(chosen.path)
        self.cache.store(self.server, info, model, keys)
        return result, AutoChoice(chosen, predictions, probed, profiled)
