"""``cloud-server --engine vllm`` against ``--engine builtin``: real server processes, one of
each for the module (vLLM starts its engine core process and loads the model: slow, so once).

Same greedy answers from both engines (a fresh 600-question split in alignedvq mode; a few
questions in fp16, int8 and image modes), streamed deltas that concatenate to the answer,
cancellation that aborts the request in vLLM and frees the slot, RESOURCE_EXHAUSTED at a full queue, and SIGTERM with 8
requests in flight (last: it stops the module's vLLM server).
"""

import importlib.util
import json
import re
import signal
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf
from conftest import cli, status_codes_of_a_burst
from edge_agent.client import jpeg_upload

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="the vllm extra is not installed (make test installs it)")]

ROWS = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]
@pytest.fixture
def vllm_server(shared_vllm):
    """The session's vLLM server (tests/conftest.py VLLM_FLAGS: at most 4 running and 4
    waiting, small enough for the admission tests to fill)."""
    return shared_vllm.get()


@pytest.fixture
def builtin_server(default_server):
    return default_server


def stub_of(server):
    return pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))


_EDGE = {}


def edge(mode):
    if mode not in _EDGE:
        _EDGE[mode] = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, mode)
    return _EDGE[mode]


def ask(stub, messages, timeout=120):
    responses = list(stub.AnswerFromCodes(iter(messages), timeout=timeout))
    return "".join(r.text_delta for r in responses[:-1]), responses[-1].summary


def metric(server, name):
    url = re.search(r"metrics on (\S+)", server.log()).group(1)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_600_fresh_questions_get_the_same_greedy_answers_from_both_engines(
        vllm_server, builtin_server, tmp_path):
    subprocess.run(cli("alignedvq") + ["dataset", "--out", str(tmp_path), "--n", "600",
                                       "--seed", "12"], check=True, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    assert len(rows) == 600
    e = edge("alignedvq")
    requests = []
    for start in range(0, len(rows), 50):
        batch = rows[start:start + 50]
        chunks = e.chunks([open_image(tmp_path / r["image"]) for r in batch])
        requests += [e.messages(c, r["question"]) for c, r in zip(chunks, batch)]

    def answers(server):
        stub = stub_of(server)
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda m: ask(stub, m)[1].answer, requests))

    vllm_answers, builtin_answers = answers(vllm_server), answers(builtin_server)
    differing = [(r["question"], b, v) for r, b, v in zip(rows, builtin_answers, vllm_answers)
                 if b != v]
    print(f"identical greedy answers: {600 - len(differing)} of 600")
    assert not differing, f"{len(differing)} of 600 differ: {differing[:10]}"


@pytest.mark.parametrize("mode", ["fp16", "int8"])
def test_feature_modes_agree(vllm_server, builtin_server, mode):
    e = edge(mode)
    for row in ROWS[:4]:
        messages = e.messages(e.chunks([open_image(SAMPLES_DIR / row["image"])])[0],
                              row["question"])
        assert ask(stub_of(vllm_server), messages)[1].answer == \
            ask(stub_of(builtin_server), messages)[1].answer


def test_image_mode_agrees(vllm_server, builtin_server):
    from alignedvq.v1 import inference_pb2 as pb

    for row in ROWS[:4]:
        request = pb.AnswerFromImageRequest(
            image=jpeg_upload(open_image(SAMPLES_DIR / row["image"]), 128, 90),
            question=row["question"])
        got = [list(stub_of(s).AnswerFromImage(request, timeout=120))[-1].summary.answer
               for s in (vllm_server, builtin_server)]
        assert got[0] == got[1] and got[0]


def test_streamed_deltas_concatenate_to_the_answer(vllm_server):
    e = edge("alignedvq")
    for row in ROWS:
        messages = e.messages(e.chunks([open_image(SAMPLES_DIR / row["image"])])[0],
                              row["question"])
        text, summary = ask(stub_of(vllm_server), messages)
        assert text == summary.answer and summary.answer
        assert summary.tokens_generated >= 1


def _messages(question="how many objects are there?"):
    e = edge("alignedvq")
    chunks = e.chunks([open_image(SAMPLES_DIR / "images" / "sample0.png")])[0]
    return e.messages(chunks, question, max_new_tokens=16)


def test_cancelling_aborts_the_request_in_vllm_and_frees_the_slot(vllm_server):
    """The embedded model answers in one word, so a request spends only milliseconds inside
    vLLM: cancels are swept over the first 100 ms after sending, 8 at a time (the capacity), so
    some land while vLLM holds the request (waiting or generating); the server logs each abort
    it passes to vLLM."""
    stub = stub_of(vllm_server)
    messages = _messages()
    aborted_before = vllm_server.log().count("aborted in vLLM")
    for delay_ms in range(0, 100, 5):
        calls = [stub.AnswerFromCodes(iter(messages), timeout=120) for _ in range(8)]
        time.sleep(delay_ms / 1000)  # where in the request's life the cancel lands
        for call in calls:
            call.cancel()
    deadline = time.monotonic() + 30
    while (metric(vllm_server, "alignedvq_batch_size") or
           metric(vllm_server, "alignedvq_queue_depth")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(vllm_server, "alignedvq_batch_size") == 0
    assert metric(vllm_server, "alignedvq_queue_depth") == 0
    assert vllm_server.log().count("aborted in vLLM") > aborted_before
    # Every slot is free again: a full capacity of new requests is admitted and answered.
    with ThreadPoolExecutor(8) as pool:
        summaries = list(pool.map(lambda _: ask(stub, messages)[1], range(8)))
    assert all(s.answer for s in summaries)


def test_a_full_queue_gets_resource_exhausted_and_nothing_else(vllm_server):
    stub = stub_of(vllm_server)
    messages = _messages()
    codes = status_codes_of_a_burst(lambda: ask(stub, messages), 24)
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert ask(stub, messages)[1].answer


def test_sigterm_lets_8_in_flight_requests_finish(vllm_server):
    """Last in the module: it stops the module's vLLM server."""
    stub = stub_of(vllm_server)
    header, *chunks = edge("alignedvq").messages(
        edge("alignedvq").chunks([open_image(SAMPLES_DIR / "images" / "sample2.png")])[0],
        "how many objects are there?")
    expected = ask(stub, [header, *chunks])[1].answer
    release = threading.Event()
    results, errors = [], []

    def in_flight():
        def requests():
            yield header
            release.wait(30)  # the RPC is open on the server while SIGTERM arrives
            yield from chunks
        try:
            results.append(list(stub.AnswerFromCodes(requests(), timeout=120))[-1]
                           .summary.answer)
        except grpc.RpcError as e:
            errors.append(e)

    threads = [threading.Thread(target=in_flight) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    vllm_server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    release.set()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == [expected] * 8
    assert vllm_server.proc.wait(120) == 0
