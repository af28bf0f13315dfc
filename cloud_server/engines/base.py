"""The seam between the server and whatever generates text (docs/architecture.md).

Everything engine-independent stays in the server: the protocol, validation, fingerprints, codec
decoding, the vision tower for uploads, the projector (a request's ``prepare``), auth, metrics,
logs, health and the drain. An engine only turns image embeddings and a question into a stream
of text. ``builtin`` (transformers + our continuous batcher) and ``vllm`` (vLLM's AsyncLLM)
implement it.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import torch

from cloud_server.conversations import ImageRef
from cloud_server.sampling import GREEDY, Sampling

# Finished.finish_reason: why an answer ended (AnswerSummary.finish_reason).
END, LENGTH, STOP_STRING, CANCELLED = "end", "length", "stop_string", "cancelled"


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    question: str                      # the user's question; each engine builds its own prompt
    max_new_tokens: int                # already validated against the server limit
    # Produces the LLaVA image embeddings (projector output, shape (n_image_tokens, lm_hidden)),
    # i.e. what LlavaForConditionalGeneration.get_image_features returns for one image.
    # Runs OFF the event loop (the engine decides on which thread); may raise a
    # cloud_server.errors.ServiceError (e.g. InvalidRequest for a bad payload).
    prepare: Callable[[], torch.Tensor]
    # What the engine's arriving() gave while this request's messages were read: admission
    # ends it, so an engine waiting for requests on their way stops counting this one exactly
    # when it joins the queue (None: it was not announced).
    arrival: object | None = None
    # Validated (cloud_server/sampling.py): a sampled request carries its seed.
    sampling: Sampling = GREEDY
    # Earlier (question, answer) turns about the same image, oldest first: they go into the
    # prompt through the checkpoint's chat template (language_model.build_prompt).
    history: tuple[tuple[str, str], ...] = ()
    # The image's handle, once known (cloud_server.conversations.ImageRef: a first request's is
    # set by its prepare): an engine with a cache keyed by image identity (vLLM) keys it by
    # this, never by anything the caller sent. ``cached_tokens`` is how many prompt tokens its
    # reuse spares, for an engine that counts no cache of its own (builtin).
    image: ImageRef = field(default_factory=ImageRef)


@dataclass(frozen=True)
class Finished:
    text: str
    tokens: int
    batch_size: int
    prepare_ms: float
    queue_ms: float
    generate_ms: float
    finish_reason: str = END           # END | LENGTH | STOP_STRING
    cached_tokens: int = 0             # prompt tokens not computed afresh


@dataclass(frozen=True)
class EngineStats:
    queue_depth: int  # admitted requests waiting for a batch slot
    running: int      # requests in the running batch


class GenerationEngine(abc.ABC):
    name: str  # "builtin" | "vllm"

    @abc.abstractmethod
    async def start(self, warm_up: GenerationRequest) -> None:
        """Load, then run ``warm_up`` through the engine's own generation path, so the first
        user pays for no lazy set-up; called once before serving. The server makes ``warm_up``
        as an image upload is made (:meth:`cloud_server.prepare.Preparer.warm_up_request`), so
        that one request runs the stages an upload runs, the vision tower included."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finished]:
        """An async generator, as vLLM's ``AsyncLLM.generate``: calling it does nothing; its
        first step admits the request, so the first ``__anext__`` raises
        cloud_server.errors.Overloaded at --max-queued and ShuttingDown while draining.

        Yields text deltas (str, concatenating to the answer), then exactly one Finished,
        decoded as ``request.sampling`` says (greedy by default). However the consumer stops (aclose(), cancellation, deadline), the
        request is aborted, stops consuming compute and gives its admission back."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Read by the metrics at scrape time, from the engine's own statistics."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """Stop admitting; requests already admitted finish."""

    @abc.abstractmethod
    async def close(self) -> None:
        ...

    def arriving(self) -> contextlib.AbstractContextManager:
        """Optional hint (not part of the agreed seam, so it has a no-op default): the server
        wraps the reading of a request's messages in it, and passes what it gives as the
        request's ``arrival``, so an engine with a batching window can wait for requests already
        on their way instead of starting a batch of one."""
        return contextlib.nullcontext()
