"""The load test's quick run (`alignedvq bench load --quick`): many concurrent clients against
real servers, one with a deliberately small queue. Nothing but answers and RESOURCE_EXHAUSTED
refusals may come back; latency is reported, never asserted."""

import json
import subprocess

from conftest import cli


def test_concurrent_clients_get_answers_or_fast_refusals_only():
    out = subprocess.run(cli("alignedvq") + ["bench", "load", "--quick", "--clients", "16",
                                             "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert [r["config"] for r in report["results"]] == ["default limits", "small queue"]
    for r in report["results"]:
        assert r["failed_otherwise"] == 0, r
        assert r["answered"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert r["sent"] == r["answered"] + r["resource_exhausted"]
    # With the default queue (64) nothing is refused at 16 clients.
    assert report["results"][0]["resource_exhausted"] == 0
