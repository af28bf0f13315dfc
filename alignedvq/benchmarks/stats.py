"""The tail statistics the latency benchmarks report."""

from __future__ import annotations

import numpy as np


def percentiles(samples_ms) -> dict:
    """p50 and p95 (numpy's linear interpolation between order statistics) and the count."""
    a = np.asarray(list(samples_ms), dtype=float)
    return {"p50": round(float(np.percentile(a, 50)), 2),
            "p95": round(float(np.percentile(a, 95)), 2), "n": int(a.size)}
