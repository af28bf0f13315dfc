"""The builtin engine's choice of each next token for one row of the batch, as vLLM's sampler
makes it (vllm/v1/sample/sampler.py), in its order: the repetition penalty, then the
temperature, min_p, top_k, top_p, then one random draw.

Reproducibility: each row draws from its own ``torch.Generator``, seeded with the request's
seed, exactly once per token. So a seeded request gets the same answer every time it is asked
alone, and the draws it gets do not depend on which other requests share its batch; its answer
under batching can differ only where the batch's arithmetic changes its probabilities (another
padding, other kernels) enough to move a draw across a boundary. (tests/test_sampling.py checks
both on the embedded model.) The random stream is torch's, not vLLM's: the same seed gives
different answers on the two engines.
"""

from __future__ import annotations

import torch

from cloud_server.sampling import Sampling


class RowSampler:
    """Picks one row's tokens. ``seen``: the token ids the repetition penalty applies to (the
    prompt's and the answer's so far, as in vLLM)."""

    def __init__(self, sampling: Sampling, prompt_ids: list[int]):
        self.sampling = sampling
        self.seen = set(prompt_ids)
        self.generator = None
        if not sampling.greedy:
            # On the CPU whatever device the model runs on: the draw is one small tensor, and a
            # CPU generator's stream is the same on every machine.
            self.generator = torch.Generator().manual_seed(sampling.seed)

    def pick(self, logits: torch.Tensor) -> int:
        """``logits``: the row's (vocab,) next-token logits."""
        s = self.sampling
        logits = logits.float()
        if s.repetition_penalty != 1.0 and self.seen:
            ids = torch.tensor(sorted(self.seen), device=logits.device)
            picked = logits[ids]
            logits = logits.clone()
            logits[ids] = torch.where(picked > 0, picked / s.repetition_penalty,
                                      picked * s.repetition_penalty)
        if self.generator is None:
            token = int(logits.argmax())
        else:
            token = self._draw(logits / s.temperature)
        self.seen.add(token)
        return token

    def _draw(self, logits: torch.Tensor) -> int:
        s = self.sampling
        probs = torch.softmax(logits, -1)
        keep = torch.ones_like(probs, dtype=torch.bool)
        if s.min_p > 0:
            keep &= probs >= s.min_p * probs.max()
        if s.top_k > 0 and s.top_k < probs.numel():
            keep &= probs >= torch.topk(probs, s.top_k).values[-1]
        if s.top_p < 1.0:
            # The most probable tokens whose mass reaches top_p: a token is kept when the mass
            # of the tokens before it (in descending order) is still short of top_p, so the
            # most probable one always is.
            masked = torch.where(keep, probs, torch.zeros_like(probs))
            ordered, order = torch.sort(masked, descending=True)
            before = torch.cumsum(ordered, 0) - ordered
            nucleus = torch.zeros_like(keep)
            nucleus[order] = before < s.top_p * ordered.sum()
            keep &= nucleus
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
