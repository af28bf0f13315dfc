"""The ``vllm`` engine: vLLM's asynchronous engine (``AsyncLLM``) behind the engine seam.

vLLM's engine core (scheduler, paged KV cache, the language model; on GPUs CUDA graphs and
tensor parallelism) runs in processes of its own. This process keeps what it owns with any
engine (protocol, validation, codec decoding, the projector, vision blocks for uploads) and
gives vLLM, per request, a prompt with one ``<image>`` and the projector's output as
``multi_modal_data={"image": embeds[None]}`` (vLLM's ``enable_mm_embeds``): vLLM replaces the
placeholder with those embeddings, exactly as transformers' ``LlavaForConditionalGeneration``
does, so both engines decode the same sequence.

- Sampling: the request's fields (cloud_server/sampling.py, already validated with vLLM's
  ranges) become ``SamplingParams`` one to one (greedy: temperature 0, as before), with
  ``max_tokens`` = the request's limit, streamed as deltas (``RequestOutputKind.DELTA``).
- Conversations: the earlier turns go into the prompt through the chat template, and the
  image's identity for vLLM's caches (``multi_modal_uuids``) is the handle this server made for
  the caller (cloud_server/conversations.py), never anything the caller sent, so vLLM's prefix
  cache serves one caller's follow-ups without letting callers share (or poison) entries. Its
  ``num_cached_tokens`` is the summary's ``cached_tokens``.
- Cancellation: closing the stream (client gone, deadline passed) closes vLLM's generator,
  which aborts the request in the engine core (``AsyncLLM.abort``), freeing its KV blocks.
- Admission: every admitted request (preparing, waiting or running in vLLM) counts against
  ``--max-batch-size`` (vLLM's ``max_num_seqs``) + ``--max-queued``; beyond that requests are
  refused at once (``Overloaded``). (The builtin engine counts only its waiting queue against
  ``--max-queued``.)
- Statistics: queue depth and batch size come from vLLM's own scheduler statistics (a stat
  logger registered with the engine), not from our guesses about vLLM's scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from typing import AsyncIterator

# Imported here, not lazily: `cloud-server --engine vllm` must fail at start-up, before anything
# loads, when vLLM is missing (cloud_server/engines/__init__.py reports the extra to install).
import vllm  # noqa: F401  (pragma: the import is the check)
from vllm import AsyncEngineArgs, SamplingParams
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

from cloud_server.engines.base import (
    CANCELLED,
    END,
    LENGTH,
    STOP_STRING,
    EngineStats,
    Finished,
    GenerationEngine,
    GenerationRequest,
)
from cloud_server.errors import Overloaded, ShuttingDown
from cloud_server.language_model import build_prompt

log = logging.getLogger("cloud_server")

# vLLM's CPU backend sizes its KV cache from --gpu-memory-utilization as a fraction of HOST
# memory (default 0.92: all of it). Without a choice from the user, a fixed cache that fits
# beside everything else: 1 GiB holds ~170k tokens of the embedded model.
CPU_KV_CACHE_BYTES = 1 << 30


def engine_arguments(config, device: str) -> dict:
    """vLLM engine arguments from the server's flags; ``--vllm-args`` (JSON) wins."""
    args = dict(model=config.model, tokenizer=config.model, dtype=config.dtype,
                enable_mm_embeds=True, limit_mm_per_prompt={"image": 1},
                tensor_parallel_size=config.tensor_parallel_size,
                max_num_seqs=config.max_batch_size, seed=0,
                # Our stat logger below replaces vLLM's periodic log lines.
                disable_log_stats=True)
    if config.max_model_len is not None:
        args["max_model_len"] = config.max_model_len
    if config.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = config.gpu_memory_utilization
    elif device == "cpu" and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    if device == "cpu":
        # torch.compile of the model costs minutes at start-up on a small CPU and gains little
        # for small models; '{"compilation_config": {"mode": 3}}' in --vllm-args turns it on.
        args["compilation_config"] = {"mode": 0}
        # Prefix caching keeps whole KV blocks only, and the CPU backend's default block is
        # 128 tokens: a follow-up about the embedded model's image (64 image tokens, ~80 in the
        # prompt) would reuse none of it. 32 is the smallest block the CPU backend runs at full
        # speed (multiples of 32); GPUs default to 16.
        args["block_size"] = 32
    if config.vllm_args:
        extra = json.loads(config.vllm_args)
        if not isinstance(extra, dict):
            raise ValueError("--vllm-args must be a JSON object of engine arguments")
        args.update(extra)
    return args


def sampling_params(request: GenerationRequest) -> SamplingParams:
    """The request's sampling as vLLM's, field for field (the names are vLLM's)."""
    s = request.sampling
    return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                          min_p=s.min_p, seed=s.seed, stop=list(s.stop) or None,
                          repetition_penalty=s.repetition_penalty,
                          max_tokens=request.max_new_tokens,
                          output_kind=RequestOutputKind.DELTA, skip_special_tokens=True)


def finish_reason(completion) -> str:
    """vLLM's finish_reason ("stop", "length", "abort") and stop_reason (the stop string that
    ended it, or a stop token id, or None for end-of-sequence) as ours."""
    if completion.finish_reason == "length":
        return LENGTH
    if completion.finish_reason == "abort":
        return CANCELLED
    return STOP_STRING if isinstance(completion.stop_reason, str) else END


def prompt_for(processor, request: GenerationRequest, embeds) -> dict:
    """The chat template with ONE <image> (vLLM expands it to as many positions as the
    embeddings have rows) after the earlier turns, and the image keyed by its server-made
    handle when it has one (a server keeping no images: vLLM hashes the embeddings itself)."""
    prompt = {"prompt": build_prompt(processor, request.question, request.history),
              "multi_modal_data": {"image": embeds.detach().cpu()[None]}}
    if request.image.handle:
        prompt["multi_modal_uuids"] = {"image": [request.image.handle.hex()]}
    return prompt


class SchedulerView(StatLoggerBase):
    """Receives vLLM's scheduler statistics after every engine step (on the event loop)."""

    latest = None  # the last SchedulerStats of the engine this view was made for

    def __init__(self, vllm_config, engine_index: int = 0):
        self.engine_index = engine_index

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        if scheduler_stats is not None:
            type(self).latest = scheduler_stats

    def log_engine_initialized(self):
        pass


class _Progress:
    """One request's outputs so far. The answer is stripped (as the builtin engine's), so
    leading whitespace is dropped and trailing whitespace held back until text follows it: the
    deltas then concatenate to exactly the answer."""

    def __init__(self):
        self.sent: list[str] = []
        self.pending = ""
        self.tokens = self.batch = self.cached_tokens = 0
        self.finished = False
        self.reason = END
        self.metrics = None

    def update(self, out, running) -> str:
        self.finished = out.finished
        completion = out.outputs[0]
        self.tokens += len(completion.token_ids)
        self.metrics = out.metrics or self.metrics
        self.cached_tokens = max(self.cached_tokens, getattr(out, "num_cached_tokens", 0) or 0)
        if out.finished:
            self.reason = finish_reason(completion)
        if not self.batch:
            self.batch = running()  # vLLM's batch when this request's first output came
        text = self.pending + completion.text
        if not self.sent:
            text = text.lstrip()
        piece = text.rstrip()
        self.pending = text[len(piece):]
        if piece:
            self.sent.append(piece)
        return piece

    def queue_ms(self) -> float:
        m = self.metrics
        if m is not None and m.scheduled_ts and m.queued_ts:
            return max(0.0, (m.scheduled_ts - m.queued_ts) * 1000)
        return 0.0


class VllmEngine(GenerationEngine):
    name = "vllm"

    def __init__(self, engine_args: dict, processor, max_queued: int):
        self.engine_args = engine_args
        self.processor = processor
        self.max_running = engine_args.get("max_num_seqs", 256)
        self.max_queued = max_queued
        self.llm: AsyncLLM | None = None
        self.admitted = 0       # admitted by generate() and not finished (any stage)
        self.preparing = 0      # of those, running their prepare (decode, projector)
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.ids = itertools.count()
        # A class per engine, so two engines in one process keep their own statistics.
        self.view = type("SchedulerView", (SchedulerView,), {"latest": None})

    @classmethod
    def create(cls, config, model) -> "VllmEngine":
        device = config.resolved_device()
        cloud = model.cloud
        return cls(engine_arguments(config, "cuda" if device.startswith("cuda") else "cpu"),
                   cloud.processor, config.max_queued)

    # -- life cycle -------------------------------------------------------------------------
    async def start(self, warm_up: GenerationRequest) -> None:
        log.info("starting vLLM %s: %s", vllm.__version__, self.engine_args)
        args = AsyncEngineArgs(**self.engine_args)
        # Constructing it starts the engine core process and loads the model: blocking.
        self.llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args,
                                           stat_loggers=[self.view])
        # No output task to start by hand: vLLM's add_request starts it, on the loop that calls.
        async for _ in self.generate(warm_up):
            pass

    async def drain(self) -> None:
        self.draining = True
        await self.idle.wait()

    async def close(self) -> None:
        if self.llm is not None:
            llm, self.llm = self.llm, None
            await asyncio.to_thread(llm.shutdown)

    # -- requests ---------------------------------------------------------------------------
    def _admit(self) -> None:
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if self.admitted >= self.max_running + self.max_queued:
            raise Overloaded(f"{self.admitted} requests are running or queued (at most "
                             f"{self.max_running} running, --max-batch-size, and "
                             f"{self.max_queued} waiting, --max-queued); retry later")
        self.admitted += 1
        self.idle.clear()

    def _release(self) -> None:
        self.admitted -= 1
        if self.admitted == 0:
            self.idle.set()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finished]:
        self._admit()
        try:
            started = time.perf_counter()
            self.preparing += 1
            try:
                embeds = await asyncio.to_thread(request.prepare)
            finally:
                self.preparing -= 1
            prepared = time.perf_counter()
            params = sampling_params(request)
            # After prepare: a first request's handle is known now.
            prompt = prompt_for(self.processor, request, embeds)
            # vLLM needs ids unique among its live requests; a client may reuse its own.
            vllm_id = f"{request.request_id}-{next(self.ids)}"
            state = _Progress()
            # aclosing: when our stream is closed early, vLLM's generator is closed at once (not
            # whenever it is garbage-collected), and closing it aborts the request in vLLM.
            async with contextlib.aclosing(self.llm.generate(prompt, params, vllm_id)) as outs:
                try:
                    async for out in outs:
                        piece = state.update(out, self._running)
                        if piece:
                            yield piece
                finally:
                    if not state.finished:  # closed early: client gone or deadline passed
                        log.info("request %s aborted in the vllm engine after %d tokens",
                                 vllm_id, state.tokens)
            done = time.perf_counter()
            queue_ms = state.queue_ms()
            yield Finished(text="".join(state.sent), tokens=state.tokens,
                           batch_size=max(state.batch, 1),
                           prepare_ms=(prepared - started) * 1000, queue_ms=queue_ms,
                           generate_ms=max(0.0, (done - prepared) * 1000 - queue_ms),
                           finish_reason=state.reason, cached_tokens=state.cached_tokens)
        finally:
            self._release()

    # -- statistics -------------------------------------------------------------------------
    def _running(self) -> int:
        latest = self.view.latest
        return latest.num_running_reqs if latest is not None else 0

    def stats(self) -> EngineStats:
        if self.admitted == 0:  # vLLM's last report may predate the last request finishing
            return EngineStats(queue_depth=0, running=0)
        latest = self.view.latest
        waiting = latest.num_waiting_reqs if latest is not None else 0
        return EngineStats(queue_depth=self.preparing + waiting, running=self._running())


create = VllmEngine.create
