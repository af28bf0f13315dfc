"""Keep glibc from holding freed feature batches, so the trainer's peak does not creep up with
the number of batches it has seen.

glibc serves a large allocation with its own mmap (returned to the system when freed) only
above a threshold, and it raises that threshold each time such a block is freed, up to 32 MB.
The trainer frees many same-sized tensors of tens of MB (a batch's features at the cut), so
after a while they come from the heap instead, whose fragments are not returned: measured at
llava-1.5-7b's vision geometry, the peak grew 1.53 MB per image between 100 and 400 images with
the dynamic threshold and 0.21 MB with a fixed one (docs/benchmarks/codec_training.md).
Setting the threshold with ``mallopt`` fixes it and turns the adjustment off. Linux with glibc
only; elsewhere nothing changes."""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3       # glibc's <malloc.h>
THRESHOLD_BYTES = 128 * 1024  # glibc's default before any adjustment


def fix_mmap_threshold(threshold: int = THRESHOLD_BYTES) -> bool:
    """True when the threshold was set (this process, from now on)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):   # not glibc (musl has no mallopt)
        return False
