"""The benchmark report runs and writes well-formed files. Benchmarks measure; these tests only
check that ``alignedvq bench --quick`` works end to end on a small sample (no timed assertion)."""

import asyncio
import json
import subprocess
import threading

import pytest
from conftest import cli

pytest.importorskip("matplotlib", reason="the bench extra is not installed (make install)")
pytest.importorskip("skimage", reason="the bench extra is not installed (make install)")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


@pytest.mark.integration
def test_bench_quick_writes_report(tmp_path):
    from alignedvq.benchmarks.rate_accuracy import Budget

    out = tmp_path / "bench"
    done = subprocess.run([*cli("alignedvq"), "bench", "--quick", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    report = json.loads((out / "report.json").read_text())
    assert printed["started_utc"] == report["started_utc"]
    assert report["quick"] is True
    for key in ("machine", "command", "rate_accuracy", "bytes", "latency", "gpu", "figures"):
        assert key in report, key
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]

    # 1. every reference point and every quick codec has an accuracy and (but for the original
    # model, which sends nothing) a positive byte count
    points = report["rate_accuracy"]["points"]
    assert {p["mode"] for p in points} == {"original", "fp16", "int8", "image", "alignedvq"}
    for p in points:
        assert 0 <= p["accuracy"] <= 1 and p["n"] == Budget.quick().test_questions
        if p["mode"] != "original":
            assert _positive(p["bytes_per_image"]), p
    vq = {(p["bits"], p["stages"]): p["bytes_per_image"] for p in points
          if p["mode"] == "alignedvq"}
    assert vq[4, 1] < vq[6, 1] < vq[4, 2]      # 32, 48, 2 x 32 bytes of indices + a header

    # 2. bytes: both geometries; the 7B fp16 payload is 576 x 1024 x 2 bytes plus a header
    for key in ("tiny", "llava7b"):
        rows = report["bytes"][key]["rows"]
        assert rows and all(_positive(r["bytes_mean"]) for r in rows)
    seven = {r["encoding"]: r for r in report["bytes"]["llava7b"]["rows"]}
    assert 576 * 1024 * 2 < seven["fp16 features"]["bytes_mean"] < 576 * 1024 * 2 + 100
    assert seven["alignedvq 12 bits"]["index_bytes"] == 864

    # 3. latency: split path and JPEG measured side by side, every part non-negative
    lat = report["latency"]
    assert lat["link"]["kind"] in ("netns", "proxy")
    assert {p["mode"] for p in lat["points"]} >= {"alignedvq", "image"}
    for p in lat["points"]:
        assert _positive(p["total_ms"]) and _positive(p["payload_bytes"])
        assert min(p["edge_ms"], p["network_ms"], p["cloud_ms"]) >= 0
        assert p["n"] == lat["repeats"]
    assert all(_positive(v) for v in lat["speedup_image_over_alignedvq"].values())

    # 4. the GPU script's shrunken run, and the command for a GPU box
    shrink = report["gpu"]["shrink_run"]
    for key in ("edge_ms", "cloud_prefill_ms", "cloud_per_token_ms", "pixel_prefill_ms"):
        assert _positive(shrink[key]), key
    assert "--device cuda" in report["gpu"]["gpu_command"]

    # the files: markdown with every section, PNGs that decode
    md = (out / "report.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4."):
        assert heading in md
    from PIL import Image

    assert set(report["figures"]) == {"accuracy_vs_bytes.png", "bytes_per_image.png",
                                      "latency_vs_link.png"}
    for name in report["figures"]:
        assert f"]({name})" in md
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_gpu_script_shrunken_config(capsys):
    from alignedvq.benchmarks.gpu_geometry import main

    assert main(["--shrink", "--device", "cpu", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shrink"] and result["tokens"] == 16 and result["payload_index_bytes"] == 24
    assert all(_positive(result[k]) for k in ("edge_ms", "cloud_first_token_ms",
                                              "pixel_prefill_ms", "pixel_per_token_ms"))


def test_gpu_script_without_gpu_prints_the_command(capsys):
    import torch

    from alignedvq.benchmarks.gpu_geometry import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full script would run")
    assert main(["--device", "cpu"]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_proxy_link_delivers_bytes_in_order():
    """The fallback link relays a real TCP stream intact, in both directions, and never
    faster than its one-way delay allows."""
    import time

    from alignedvq.benchmarks.netlink import ProxyLink

    received = []

    async def echo(reader, writer):
        data = await reader.read(-1)
        received.append(len(data))
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(echo, "127.0.0.1", 0))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    port = server.sockets[0].getsockname()[1]
    payload = bytes(range(256)) * 200          # 51,200 bytes
    with ProxyLink(one_way_delay_ms=15) as link:
        link.set_rate(50)
        host, proxy_port = link.target(f"127.0.0.1:{port}").split(":")
        import socket

        t0 = time.monotonic()
        with socket.create_connection((host, int(proxy_port)), timeout=30) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            back = b""
            while chunk := s.recv(65536):
                back += chunk
        elapsed = time.monotonic() - t0
    loop.call_soon_threadsafe(loop.stop)
    assert received == [len(payload)] and back == payload[::-1]
    assert elapsed >= 0.030     # there and back: at least twice the one-way delay


def test_eval_image_mode_counts_the_upload():
    """The cloud-only reference point of the report: ``eval --mode image`` answers from the
    decoded JPEG-90 and counts exactly the upload ``edge-agent --mode image`` sends."""
    from alignedvq.evaluation.evaluate import evaluate
    from alignedvq.v1 import inference_pb2 as pb
    from common.imaging.policy import jpeg_baseline, open_image
    from common.paths import DEFAULT_MODEL_DIR, SAMPLES_DIR

    questions = SAMPLES_DIR / "questions.jsonl"
    result = evaluate(DEFAULT_MODEL_DIR, questions, mode="image", progress=False)
    rows = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    sizes = [len(pb.AnswerFromImageRequest(image=jpeg_baseline(
        open_image(SAMPLES_DIR / r["image"]), 128, 90)).SerializeToString()) for r in rows]
    assert result["n"] == len(rows) and not result["errors"]
    assert result["payload_bytes_mean"] == sum(sizes) / len(sizes)
    assert result["jpeg_quality"] == 90 and result["image_size"] == 128
    assert result["mode"] == "image"
    assert result["accuracy"] >= 0.75      # the demo answers all 8 right through this path


def test_eval_accepts_the_image_modes_old_name():
    """Scripts written when ``eval`` called the cloud-only baseline ``jpeg`` still run it, and
    the result carries today's name, the one ``edge-agent --mode`` uses."""
    from alignedvq.evaluation.evaluate import evaluate
    from common.paths import DEFAULT_MODEL_DIR, SAMPLES_DIR

    result = evaluate(DEFAULT_MODEL_DIR, SAMPLES_DIR / "questions.jsonl", limit=1, mode="jpeg",
                      progress=False)
    assert result["mode"] == "image" and result["n"] == 1 and result["payload_bytes_mean"] > 0


@pytest.mark.integration
def test_bench_auto_one_condition_answers_every_request(default_server, tmp_path):
    """``alignedvq bench auto``'s tiny part at --quick size for one condition (10 Mbit/s, 20 ms,
    over the proxy link to the shared server): the JSON's structure, every request answered,
    auto's first request probing the link it was not told about."""
    from alignedvq.benchmarks.auto_latency import TINY_PATHS, run

    report = run(tmp_path, quick=True, conditions=[(10, 20)], include_7b=False,
                 server_address=default_server.address)
    assert json.loads((tmp_path / "auto_latency.json").read_text()) == report
    assert (tmp_path / "auto_latency.png").stat().st_size > 0
    assert "| 10 Mbit/s, 20 ms |" in (tmp_path / "auto_latency.md").read_text()
    assert report["link"]["kind"] == "proxy" and "llava7b" not in report
    (c,) = report["tiny"]
    assert (c["rate_mbit"], c["rtt_ms"]) == (10, 20)
    assert c["answered"] == c["requests"] == len(TINY_PATHS) * report["repeats"]
    for path in TINY_PATHS:
        row = c["paths"][path]
        assert row["n"] == row["answered"] == report["repeats"]
        assert 0 < row["p50"] <= row["p95"]
    assert c["paths"]["image"]["rpcs"] == 2 and c["paths"]["codes@1"]["rpcs"] == 1
    assert c["oracle"] in ("image", "codes@4", "codes@1")
    assert sum(c["auto_picks"].values()) == report["repeats"]
    assert set(c["auto_picks"]) <= {"image", "codes@4", "codes@1"}
    assert c["auto_warmup"]["probed"] and c["auto_warmup"]["probe_ms"] > 0
    assert set(c["meets"]) == {"p50_within_5pct_of_oracle", "p95_within_10pct_of_best"}
    assert _positive(c["auto_over_oracle_p50"]) and _positive(c["auto_over_best_p95"])
