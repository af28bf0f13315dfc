"""A request's sampling settings (``GenerationParams`` fields 2-8, contract v1.2), checked once.

The names, meanings and ranges are vLLM's ``SamplingParams`` (vllm/sampling_params.py,
``_verify_args``), so the vLLM engine hands them over one to one and a user's vLLM habits carry
over. One difference, on purpose: an unset temperature means 0 (greedy), not vLLM's 1, so every
request older than v1.2 is answered greedily, exactly as before.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace

from alignedvq.v1 import inference_pb2 as pb
from cloud_server.errors import InvalidRequest

# vLLM's _SAMPLING_EPS: a temperature below it is greedy decoding.
GREEDY_BELOW = 1e-5
MAX_TEMPERATURE = 2.0
# Our own bounds (vLLM has none): a stop string is matched against the text after every token,
# so their number and length bound that work.
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
# Seeds the server draws stay below 2^53, so a client whose numbers are doubles (JavaScript)
# holds the reported seed exactly and can send it back.
DRAWN_SEED_BOUND = 1 << 53


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0                     # 0 (or -1): every token
    min_p: float = 0.0
    seed: int | None = None            # set for every sampled request once validated
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that changes the logits: the argmax of the model's own."""
        return self.greedy and self.repetition_penalty == 1.0


GREEDY = Sampling()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidRequest(message)


def sampling_from(params: pb.GenerationParams) -> Sampling:
    """The request's sampling, or InvalidRequest naming the field, its range and the value."""
    has = params.HasField
    s = Sampling(
        temperature=params.temperature if has("temperature") else 0.0,
        top_p=params.top_p if has("top_p") else 1.0,
        top_k=params.top_k if has("top_k") else 0,
        min_p=params.min_p if has("min_p") else 0.0,
        seed=params.seed if has("seed") else None,
        stop=tuple(params.stop),
        repetition_penalty=params.repetition_penalty if has("repetition_penalty") else 1.0)
    _check(math.isfinite(s.temperature) and 0.0 <= s.temperature <= MAX_TEMPERATURE,
           f"temperature must be in [0, {MAX_TEMPERATURE:g}] (0: greedy), got {s.temperature}")
    _check(math.isfinite(s.top_p) and 0.0 < s.top_p <= 1.0,
           f"top_p must be in (0, 1] (1: every token), got {s.top_p}")
    _check(s.top_k >= -1, f"top_k must be 0 or -1 (every token) or at least 1, got {s.top_k}")
    _check(math.isfinite(s.min_p) and 0.0 <= s.min_p <= 1.0,
           f"min_p must be in [0, 1] (0: off), got {s.min_p}")
    _check(math.isfinite(s.repetition_penalty) and s.repetition_penalty > 0.0,
           f"repetition_penalty must be a finite number above 0 (1: off), got "
           f"{s.repetition_penalty}")
    _check(len(s.stop) <= MAX_STOP_STRINGS,
           f"{len(s.stop)} stop strings; at most {MAX_STOP_STRINGS} are accepted")
    for text in s.stop:
        _check(0 < len(text) <= MAX_STOP_CHARS, f"a stop string must have 1 to {MAX_STOP_CHARS} "
                                                f"characters, got {len(text)}")
    if s.greedy:
        # As vLLM does for greedy requests: the filters and the seed play no part.
        return replace(s, top_p=1.0, top_k=0, min_p=0.0, seed=None)
    if s.seed is None:
        # Drawn here, not left to the engine, so the summary can report it.
        s = replace(s, seed=secrets.randbelow(DRAWN_SEED_BOUND))
    return s
