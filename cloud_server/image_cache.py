"""The images a server remembers for follow-up questions: an LRU bounded in bytes, whose
entries expire a while after their last use, each owned by one caller.

Thread-safe: entries are put on the engine's thread (after a request's ``prepare``) and looked
up on the event loop. It counts what happens to it (``stats``); the metrics read those counts
when scraped (:meth:`cloud_server.metrics.Metrics.watch_images`), so the cache knows nothing of
Prometheus.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class _Entry:
    owner: str
    value: torch.Tensor
    nbytes: int
    expires: float


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evicted: int    # made room for newer entries (LRU)
    expired: int    # found or swept past their TTL
    entries: int
    bytes: int      # held now, never above the bound


def tensor_bytes(t: torch.Tensor) -> int:
    return t.element_size() * t.numel()


class ImageCache:
    """``max_bytes``: the most the values may hold together (0 keeps nothing); ``ttl_s``: how
    long an entry lives after its last use. ``clock``: seconds, monotonic (tests pass their
    own)."""

    def __init__(self, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_bytes, self.ttl_s, self.clock = max_bytes, ttl_s, clock
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = self._misses = self._evicted = self._expired = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def put(self, key: bytes, owner: str, value: torch.Tensor) -> bool:
        """Keeps ``value`` under ``key`` for ``owner``, evicting the least recently used
        entries as needed; False (nothing kept) when the value alone is over the bound."""
        nbytes = tensor_bytes(value)
        if nbytes > self.max_bytes:
            return False
        with self._lock:
            now = self.clock()
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._sweep(now)
            while self._bytes + nbytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self._evicted += 1
            self._entries[key] = _Entry(owner, value, nbytes, now + self.ttl_s)
            self._bytes += nbytes
        return True

    def get(self, key: bytes, owner: str) -> torch.Tensor | None:
        """The value, when ``key`` is live and ``owner``'s (then its TTL starts again); None
        otherwise. Another caller's entry is a miss like an unknown key, and stays: the caller
        who made it still uses it."""
        with self._lock:
            now = self.clock()
            entry = self._entries.get(key)
            if entry is not None and entry.expires <= now:
                self._drop(key)
                self._expired += 1
                entry = None
            if entry is None or entry.owner != owner:
                self._misses += 1
                return None
            entry.expires = now + self.ttl_s
            self._entries.move_to_end(key)
            self._hits += 1
            return entry.value

    def stats(self) -> CacheStats:
        with self._lock:
            self._sweep(self.clock())
            return CacheStats(self._hits, self._misses, self._evicted, self._expired,
                              len(self._entries), self._bytes)

    # -- holding the lock ------------------------------------------------------------------
    def _drop(self, key: bytes) -> None:
        self._bytes -= self._entries.pop(key).nbytes

    def _sweep(self, now: float) -> None:
        """Drops expired entries. Uses refresh an entry's expiry and move it to the end, so the
        order is that of expiry too: the expired ones are at the front."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            self._drop(key)
            self._expired += 1
