"""k-means over rows of a tensor, in chunks bounded in memory: how a codec's codebooks are
initialised (:meth:`common.codec.aligned_vq.AlignedVQ.initialise`)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from common.codec.aligned_vq import nearest_codeword


def nearest_in_chunks(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """``nearest_codeword`` over many rows. Rows per chunk shrink as K grows, so the (rows, K)
    distance matrix stays ~256 MB: 200,000 rows at K = 65,536 (16 bits) would need 52 GB."""
    rows = max(1024, (1 << 26) // len(book))
    return torch.cat([nearest_codeword(c, book) for c in x.split(rows)])


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    if len(x) < k:
        raise ValueError(f"k-means for {k} codewords needs at least {k} tokens, got {len(x)}: "
                         f"raise --init-images or --init-tokens, or use fewer --bits")
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in tqdm(range(iters), desc=f"k-means (K={k})", unit="iter", leave=False):
        assign = nearest_in_chunks(x, centers)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        centers = torch.where(empty[:, None], centers, sums / counts.clamp(min=1)[:, None])
        if empty.any():  # re-seed empty clusters on random points
            centers[empty] = x[torch.randint(0, len(x), (int(empty.sum()),), generator=g)]
    return centers
