"""Bit-exact packing of codebook indices, for any width from 1 to 16 bits.

Wire format (the same in every language; protos/README.md repeats it):

* indices are written in order, each as exactly ``bits`` bits, **least-significant bit first**;
* the resulting bit stream fills bytes from the **least-significant bit** of byte 0 upwards
  (bit ``p`` of the stream is bit ``p % 8`` of byte ``p // 8``), which makes the format
  independent of host byte order;
* the last byte is padded with **zero** bits; the packed length is exactly
  ``ceil(count * bits / 8)`` bytes.

An unpacker refuses a buffer of the wrong length, non-zero padding, or an index >= K: a bounded
index payload can be validated completely, which a raw-tensor ingress cannot.
"""

from __future__ import annotations

import numpy as np

MIN_BITS, MAX_BITS = 1, 16


class PackingError(ValueError):
    """The packed bytes do not describe ``count`` indices of ``bits`` bits below ``k``."""


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def _check_width(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise PackingError(f"bits per index must be in {MIN_BITS}..{MAX_BITS}, got {bits}")


def pack(indices, bits: int) -> bytes:
    _check_width(bits)
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= 1 << bits):
        raise PackingError(f"indices must be in 0..{(1 << bits) - 1} for {bits} bits")
    stream = ((idx[:, None] >> np.arange(bits)) & 1).astype(np.uint8).ravel()
    return np.packbits(stream, bitorder="little").tobytes()


def unpack(data: bytes, count: int, bits: int, k: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack`; ``k`` (the codebook size) bounds every index when given."""
    _check_width(bits)
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise PackingError(f"{count} indices of {bits} bits pack into {expected} bytes, "
                           f"got {len(data)}")
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if stream[count * bits:].any():
        raise PackingError("padding bits after the last index must be zero")
    idx = (stream[:count * bits].reshape(count, bits).astype(np.int64)
           << np.arange(bits)).sum(axis=1)
    if k is not None and idx.size and idx.max() >= k:
        bad = int(np.argmax(idx >= k))
        raise PackingError(f"index {int(idx[bad])} at position {bad} is out of range for a "
                           f"codebook of {k} entries")
    return idx
