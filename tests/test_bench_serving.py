"""Quick runs of the serving benchmarks against real servers. They check that the runs work and
report well-formed figures; figures are reported, never asserted.

- `alignedvq bench load --seconds 2`: many concurrent clients, one server with a deliberately
  small queue. Nothing but answers and RESOURCE_EXHAUSTED refusals may come back.
- `alignedvq bench batching --quick --json`: batching off and on at 1, 4, 16, 32 clients.

Both run the command's main in this process (the servers they drive are real processes): a
subprocess would add only another torch start-up; `tests/test_bench.py` runs the real
`alignedvq` process."""

import json

import pytest
from conftest import run_in_process

from alignedvq.cli import main as alignedvq

pytestmark = pytest.mark.integration  # the bench commands start servers


def test_concurrent_clients_get_answers_or_fast_refusals_only():
    out = run_in_process(alignedvq, ["bench", "load", "--clients", "16", "--seconds", "2",
                                     "--json"])
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert [r["config"] for r in report["results"]] == ["default limits", "small queue"]
    for r in report["results"]:
        assert r["failed_otherwise"] == 0, r
        assert r["answered"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert r["sent"] == r["answered"] + r["resource_exhausted"]
    # With the default queue (64) nothing is refused at 16 clients.
    assert report["results"][0]["resource_exhausted"] == 0


def test_batching_benchmark_reports_every_point_and_the_speedup():
    out = run_in_process(alignedvq, ["bench", "batching", "--quick", "--json"])
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    points = {(p["batching"], p["clients"]): p for p in report["points"]}
    assert set(points) == {(s, n) for s in ("off", "on") for n in (1, 4, 16, 32)}
    for p in points.values():
        assert p["answered"] == p["sent"] > 0 and p["p99_ms"] >= p["p50_ms"] > 0
    expected = points["on", 16]["answers_per_s"] / points["off", 16]["answers_per_s"]
    assert report["speedup_at_16"] == round(expected, 2)
    assert report["machine"]["cores"] >= 1
