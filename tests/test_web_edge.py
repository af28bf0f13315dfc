"""The browser edge (examples/web) in a real headless Chromium, against a real cloud-server's
web port (the session's `web_server`, which requires a token): the page, deep-linked, is refused
without the token and says so; with it, it answers the 8 sample questions right, and for the PNG
samples the request messages it sent are byte for byte what `edge-agent --runtime onnx
--dump-payload` sends; without a loadable graph it falls back to the JPEG upload and says so.

Skipped when no Chromium is installed (`make chromium` installs Debian's; CI's `make test` does);
needs `make install` for onnxruntime-web (npm ci in examples/node-client). Set
ALIGNEDVQ_SCREENSHOT=docs/web_edge.png to refresh the screenshot in the docs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import urllib.parse

import pytest
from cdp import Browser, chromium_binary
from conftest import edge_agent_in_process

from alignedvq.evaluation.answers import is_correct
from alignedvq.v1 import inference_pb2 as pb
from common.paths import REPO_ROOT, SAMPLES_DIR

CHROMIUM = chromium_binary()
ORT_WEB = REPO_ROOT / "examples" / "node-client" / "node_modules" / "onnxruntime-web"
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: `make chromium` "
                                 "installs Debian's (make test does)")]
ROWS = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]
SETTLED = "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"


def data_url(image: str) -> str:
    mime = "image/png" if image.endswith(".png") else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode((SAMPLES_DIR / image).read_bytes()).decode()


def deep_link(server, row, **extra) -> str:
    return server.url + "?" + urllib.parse.urlencode(
        {"image": data_url(row["image"]), "question": row["question"], **extra})


@pytest.fixture(scope="module")
def page_run(web_server, tmp_path_factory):
    """Drives one browser through the whole scenario (one Chromium start, one page load per
    step that needs one) and returns what each step saw; the tests below check it."""
    if not ORT_WEB.is_dir():
        pytest.fail(f"{ORT_WEB} is missing: run `make install` (npm ci in examples/node-client)")
    return asyncio.run(_scenario(web_server, tmp_path_factory.mktemp("browser")))


async def _text(page, element_id: str) -> str:
    return await page.evaluate(f"document.getElementById({element_id!r}).textContent")


async def _scenario(server, folder):
    seen = {}
    async with Browser(CHROMIUM) as page:
        # 1. Deep link, no token: refused, visibly.
        await page.navigate(deep_link(server, ROWS[0]))
        seen["refused_state"] = await page.wait_for(SETTLED, 30)
        seen["refused_text"] = await _text(page, "error")
        seen["refused_answer"] = await _text(page, "answer")
        # 2. The token, as a user types it (kept for the tab), then the deep link again: a
        # fresh page load, timed from navigation to the graph ready and to the first answer.
        await page.evaluate(f"sessionStorage.setItem('alignedvq-token', {server.token!r})")
        started = time.monotonic()
        await page.navigate(deep_link(server, ROWS[0]))
        seen["first_state"] = await page.wait_for(SETTLED, 30)
        seen["first_wall_s"] = time.monotonic() - started
        seen["timings"] = await page.evaluate("window.alignedvq.timings")
        seen["mode_text"] = await _text(page, "mode")
        seen["bytes_text"] = await _text(page, "bytes")
        seen["answer_text"] = await _text(page, "answer")
        seen["dump_element"] = json.loads(await _text(page, "request"))
        results = [await page.evaluate("window.alignedvq.last")]
        shot = await page.screenshot()
        (folder / "page.png").write_bytes(shot)
        if os.environ.get("ALIGNEDVQ_SCREENSHOT"):
            (REPO_ROOT / os.environ["ALIGNEDVQ_SCREENSHOT"]).write_bytes(shot)
        seen["screenshot"] = shot
        # 3. The other questions through the page's own ask (what the form calls).
        for row in ROWS[1:]:
            results.append(await page.evaluate(
                f"window.alignedvq.ask({data_url(row['image'])!r}, {row['question']!r})"))
        seen["results"] = results
        # 4. No loadable graph (an edge folder that does not exist): the JPEG upload, said so.
        await page.navigate(deep_link(server, ROWS[2], edge="no-such-edge/"))
        seen["fallback_state"] = await page.wait_for(SETTLED, 30)
        seen["fallback_mode"] = await _text(page, "mode")
        seen["fallback"] = await page.evaluate("window.alignedvq.last")
        seen["console"] = page.console
    return seen


def test_without_its_token_the_page_is_refused_visibly(page_run):
    assert page_run["refused_state"] == "error"
    assert "needs an access token" in page_run["refused_text"]
    assert "UNAUTHENTICATED" in page_run["refused_text"]
    assert page_run["refused_answer"] == ""


def test_the_page_answers_the_sample_questions_right(page_run):
    assert page_run["first_state"] == "done", page_run["console"]
    assert page_run["mode_text"].startswith("The edge runs in this browser")
    results = page_run["results"]
    assert [r.get("path") for r in results] == ["codes"] * len(ROWS), results
    wrong = [(row["question"], r["answer"], row["answer"]) for row, r in zip(ROWS, results)
             if not is_correct(r["answer"], row["answer"])]
    assert not wrong
    assert page_run["answer_text"] == results[0]["answer"]
    # The bytes shown are the server's count of what arrived, a fraction of the JPEG's.
    assert page_run["bytes_text"].startswith(f"{results[0]['payload_bytes']} B")
    assert all(r["payload_bytes"] * 10 < r["jpeg_request_bytes"] for r in results)
    # Page load and first answer, from navigation (printed for the docs: docs/web_edge.md).
    t = page_run["timings"]
    print(f"\npage ready {t['ready_ms']:.0f} ms, first answer {t['first_answer_ms']:.0f} ms "
          f"after navigation; {page_run['first_wall_s']:.2f} s as the test saw it")
    assert 0 < t["ready_ms"] < t["first_answer_ms"]


def test_the_page_sends_what_edge_agent_sends(page_run, web_server, tmp_path):
    results = page_run["results"]
    assert page_run["dump_element"]["messages_base64"] == results[0]["messages_base64"]
    assert page_run["dump_element"]["method"] == "/alignedvq.v1.InferenceService/AnswerFromCodes"
    for i, (row, page) in enumerate(zip(ROWS, results)):
        dump = tmp_path / f"python{i}.json"
        run = edge_agent_in_process(
            "--server", web_server.address, "--auth-token-file", web_server.token_file,
            "--runtime", "onnx", "--onnx-dir", web_server.edge, "--image", SAMPLES_DIR / row["image"],
            "--question", row["question"], "--json", "--mode", "alignedvq", "--dump-payload", dump)
        assert run.returncode == 0, run.stderr[-2000:]
        python = json.loads(dump.read_text())["messages_base64"]
        if row["image"].endswith(".png"):  # PNG decoding is exact: the same bytes
            assert page["messages_base64"] == python, row
        else:  # the browser's JPEG decoder against Pillow's: the same header at least
            assert page["messages_base64"][0] == python[0], row
        assert page["answer"] == json.loads(run.stdout)["answer"], row
        # What went on the wire is those messages, framed as AnswerFromCodesBundleRequest.
        parts = [base64.b64decode(m) for m in page["messages_base64"]]
        body = base64.b64decode(page["body_base64"])
        assert body == b"".join(b"\x0a" + bytes([len(p)]) + p for p in parts)
        assert [m.SerializeToString() for m in
                pb.AnswerFromCodesBundleRequest.FromString(body).messages] == parts
        assert page["payload_bytes"] == len(body)


def test_the_screenshot_is_a_png_of_the_answered_page(page_run):
    shot = page_run["screenshot"]
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000


def test_without_a_graph_the_page_uploads_a_jpeg_and_says_so(page_run):
    assert page_run["fallback_state"] == "done", page_run["console"]
    assert page_run["fallback_mode"].startswith("Uploading a JPEG instead of codes: no exported edge")
    fallback = page_run["fallback"]
    assert fallback["path"] == "image" and fallback["method"] == "AnswerFromImage"
    assert is_correct(fallback["answer"], ROWS[2]["answer"])
    assert fallback["payload_bytes"] == fallback["jpeg_request_bytes"]
