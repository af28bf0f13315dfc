"""What every generation engine promises (cloud_server/engines/base.py), checked the same way for
each (``cloud-server --engine builtin`` and ``--engine vllm``): against the session's small
server of each engine (tests/conftest.py SMALL_FLAGS: at most 4 running and 4 waiting), real
processes on loopback.

Deltas concatenate to the summary's answer; a full queue gets RESOURCE_EXHAUSTED naming
--max-queued; cancelled requests give their slots back; SIGTERM lets in-flight requests finish
and refuses new ones (last of the session: it stops the servers).
"""

import json
import re
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import status_codes_of_a_burst
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf

pytestmark = pytest.mark.integration

ROWS = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]
QUESTION = "how many objects are there?"
# Requests each engine admits at once from idle on the small server: vLLM counts running and
# waiting requests against one limit (4 + 4); the builtin engine refuses beyond 4 waiting, and
# a burst may all be waiting before its model thread takes any into the batch.
ADMITS_AT_ONCE = {"builtin": 4, "vllm": 8}


@pytest.fixture(scope="module")
def edge():
    return EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)


def messages_for(edge, image="images/sample2.png", question=QUESTION):
    chunks = edge.chunks([open_image(SAMPLES_DIR / image)])[0]
    return edge.messages(chunks, question, max_new_tokens=16)


def stub_of(server):
    return pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))


def engine_of(server) -> str:
    return re.search(r"--engine (\w+)", " ".join(server.proc.args)).group(1)


def ask(stub, messages, timeout=120):
    responses = list(stub.AnswerFromCodes(iter(messages), timeout=timeout))
    return "".join(r.text_delta for r in responses[:-1]), responses[-1].summary


def metric(server, name) -> float:
    url = re.search(r"metrics on (\S+)", server.log()).group(1)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_streamed_deltas_concatenate_to_the_answer(small_server, edge):
    stub = stub_of(small_server)
    for row in ROWS:
        messages = messages_for(edge, row["image"], row["question"])
        text, summary = ask(stub, messages)
        assert text == summary.answer and summary.answer, row
        assert summary.tokens_generated >= 1
    upload = pb.AnswerFromImageRequest(
        image=jpeg_baseline(open_image(SAMPLES_DIR / ROWS[0]["image"]), 128, 90),
        question=ROWS[0]["question"])
    responses = list(stub.AnswerFromImage(upload, timeout=120))
    assert "".join(r.text_delta for r in responses[:-1]) == responses[-1].summary.answer


def test_a_full_queue_gets_resource_exhausted_naming_max_queued(small_server, edge):
    stub = stub_of(small_server)
    messages = messages_for(edge)
    # 24 at once is three times the capacity: some are refused, and only with that code.
    codes = status_codes_of_a_burst(lambda: ask(stub, messages), 24)
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert ask(stub, messages)[1].answer


def test_cancelled_requests_give_their_slots_back(small_server, edge):
    """The embedded model answers in one word, so a request spends only milliseconds inside the
    engine: cancels are swept over the first 100 ms after sending, 8 at a time, so some land
    while the engine holds the request (waiting or generating); each engine logs the requests
    it aborts."""
    server, engine = small_server, engine_of(small_server)
    stub = stub_of(server)
    messages = messages_for(edge)
    aborted = f"aborted in the {engine} engine"
    aborted_before = server.log().count(aborted)
    for delay_ms in range(0, 100, 5):
        calls = [stub.AnswerFromCodes(iter(messages), timeout=120) for _ in range(8)]
        time.sleep(delay_ms / 1000)  # where in the request's life the cancel lands
        for call in calls:
            call.cancel()
    deadline = time.monotonic() + 30
    while (metric(server, "alignedvq_batch_size") or metric(server, "alignedvq_queue_depth")):
        assert time.monotonic() < deadline, "the engine still holds cancelled requests"
        time.sleep(0.05)
    # The log is read by a thread: give the abort lines a moment to arrive.
    while server.log().count(aborted) <= aborted_before:
        assert time.monotonic() < deadline, "no cancel reached the engine"
        time.sleep(0.05)
    # Every slot is free again: as many new requests as the engine admits at once are answered.
    n = ADMITS_AT_ONCE[engine]
    with ThreadPoolExecutor(n) as pool:
        summaries = list(pool.map(lambda _: ask(stub, messages)[1], range(n)))
    assert all(s.answer for s in summaries)


def _until_not_serving(server, deadline_s=30):
    """The drain has begun once health stops saying SERVING (what a load balancer watches)."""
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status \
                    != health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            return
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)


def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(small_server_to_stop,
                                                                     edge):
    server = small_server_to_stop
    stub = stub_of(server)
    header, *chunks = messages_for(edge)
    expected = ask(stub, [header, *chunks])[1].answer
    release = threading.Event()
    results, errors = [], []
    opened = threading.Semaphore(0)

    def in_flight():
        def requests():
            yield header
            release.wait(60)  # the RPC is open on the server while SIGTERM arrives
            yield from chunks
        try:
            call = stub.AnswerFromCodes(requests(), timeout=120)
            call.initial_metadata()  # the server sends it as its handler starts
            opened.release()
            results.append(list(call)[-1].summary.answer)
        except grpc.RpcError as e:
            errors.append(e)
            opened.release()

    threads = [threading.Thread(target=in_flight) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in threads:  # all open on the server
        assert opened.acquire(timeout=60), errors
    server.proc.send_signal(signal.SIGTERM)
    _until_not_serving(server)
    with pytest.raises(grpc.RpcError) as refused:
        ask(stub_of(server), [header, *chunks], timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    release.set()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == [expected] * len(threads)
    assert server.proc.wait(120) == 0
