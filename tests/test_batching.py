"""Dynamic batching: the same greedy answers as one request at a time, whatever joins or leaves
the batch when; cancelled requests leave at once; a full queue refuses at once."""

import contextlib
import json
import threading
import time

import grpc
import pytest

from alignedvq.server_process import ServerProcess
from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from cloud_server.cloud_half import CloudHalf
from cloud_server.engines.base import Finished
from cloud_server.engines.batching import BatchDecoder, Row
from cloud_server.engines.scheduler import Job, Scheduler
from cloud_server.errors import InvalidRequest, Overloaded
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from common.split.vision import features_at_cut
from edge_agent.torch_edge import EdgeHalf

ROWS = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]
# Question lengths from 2 to ~25 words, so rows are padded differently.
QUESTIONS = ["how many objects are there?", "what shape is the red object?",
             "is there a blue circle?", "where is the green object?",
             "what color is the triangle? " * 4, "how many circles are there?",
             "what", "where is the red object? look carefully at the whole image please"]


@pytest.fixture(scope="module")
def cloud():
    return CloudHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)


@pytest.fixture(scope="module")
def features():
    edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)
    images = [open_image(SAMPLES_DIR / r["image"]) for r in ROWS]
    return features_at_cut(edge.vision, edge.image_processor,
                           images[:len(QUESTIONS)] * 2)[:len(QUESTIONS)]


@pytest.fixture(scope="module")
def embeddings(cloud, features):
    """What the engine receives: the projector's output for each image."""
    return cloud.image_embeddings(features)


def _text(cloud, row):
    return cloud.processor.tokenizer.decode(row.ids, skip_special_tokens=True).strip()


def test_rows_joining_and_leaving_mid_batch_answer_as_if_alone(cloud, features, embeddings):
    alone = [cloud.answer(features[i:i + 1], [q], 6)[0] for i, q in enumerate(QUESTIONS)]
    decoder = BatchDecoder(cloud)
    rows = [Row(i, 6 if i % 3 else 2) for i in range(len(QUESTIONS))]  # mixed lengths too
    answers, joined, steps = {}, 0, 0
    while joined < len(rows) or len(decoder):
        if joined < len(rows):  # 1, 2, 3... newcomers arrive between steps
            batch = rows[joined:joined + 1 + steps % 3]
            decoder.join(batch, embeddings[joined:joined + len(batch)],
                         QUESTIONS[joined:joined + len(batch)])
            joined += len(batch)
        done = [r for r in decoder.rows if r.finished]
        answers.update({r.owner: _text(cloud, r) for r in done})
        decoder.drop(done)
        if len(decoder):
            decoder.step()
            steps += 1
    for i, row in enumerate(rows):
        want = alone[i] if row.max_new_tokens == 6 else \
            cloud.answer(features[i:i + 1], [QUESTIONS[i]], 2)[0]
        assert answers[i] == want, (i, QUESTIONS[i])


def _job(embeds, question, max_new, events, name):
    def post(item):
        kind = ("done" if isinstance(item, Finished) else "delta" if isinstance(item, str)
                else "error")
        events.append((name, kind, item))
    return Job(lambda: embeds, question, max_new, post)


def test_scheduler_streams_batches_and_drops_a_cancelled_request(cloud, features, embeddings):
    scheduler = Scheduler(cloud, max_batch_size=8, batch_window_s=0.2, max_queued=8)
    events = []
    jobs = [_job(embeddings[i], QUESTIONS[i], 8, events, i) for i in range(4)]
    jobs[2].cancel()  # gave up while queued: never computed
    jobs.append(_job(None, "x", 8, events, "bad"))

    def bad_payload():
        raise InvalidRequest("bad payload")
    jobs[-1].prepare = bad_payload
    for job in jobs:
        scheduler.submit(job)
    scheduler.start()
    try:
        deadline = time.monotonic() + 60
        while sum(kind in ("done", "error") for _, kind, _ in events) < 4:
            assert time.monotonic() < deadline, events
            time.sleep(0.01)
    finally:
        scheduler.stop(10)
    done = {name: value for name, kind, value in events if kind == "done"}
    assert sorted(done) == [0, 1, 3]
    assert all(d.batch_size == 3 for d in done.values())  # batched together in the window
    for i in (0, 1, 3):
        assert done[i].text == cloud.answer(features[i:i + 1], [QUESTIONS[i]], 8)[0]
        streamed = "".join(v for name, kind, v in events if name == i and kind == "delta")
        assert streamed == done[i].text
    assert not [e for e in events if e[0] == 2]
    assert [(k, str(v)) for n, k, v in events if n == "bad"] == [("error", "bad payload")]


def test_a_full_queue_refuses_at_once(cloud, embeddings):
    scheduler = Scheduler(cloud, max_batch_size=1, max_queued=2)  # not started: nothing drains
    for _ in range(2):
        scheduler.submit(_job(embeddings[0], "what", 2, [], 0))
    with pytest.raises(Overloaded, match="limit 2"):
        scheduler.submit(_job(embeddings[0], "what", 2, [], 0))


def test_cancelling_mid_generation_frees_the_row(cloud, embeddings):
    scheduler = Scheduler(cloud, max_batch_size=4, batch_window_s=0.05)
    scheduler.decoder.eos = set()  # no row ends early: each runs to its max_new_tokens
    events = []
    long_job = _job(embeddings[0], QUESTIONS[0], 4000, events, "long")  # minutes, uncancelled
    short_job = _job(embeddings[1], QUESTIONS[1], 4, events, "short")
    scheduler.start()
    try:
        scheduler.submit(long_job)
        scheduler.submit(short_job)
        deadline = time.monotonic() + 30
        while not any(n == "long" and k == "delta" for n, k, _ in events):  # it is generating
            assert time.monotonic() < deadline, events
            time.sleep(0.005)
        long_job.cancel()
        deadline = time.monotonic() + 30
        while scheduler.active() or scheduler.queue_depth():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        scheduler.stop(10)
    assert ("short", "done") in [(n, k) for n, k, _ in events]
    assert ("long", "done") not in [(n, k) for n, k, _ in events]
    assert ("long", "delta") in [(n, k) for n, k, _ in events]  # it was generating


def _mixed_requests(edges, image_size):
    """(kind, request) pairs: every feature mode and the image upload, mixed question lengths."""
    requests = []
    for i, question in enumerate(QUESTIONS):
        row = ROWS[i % len(ROWS)]
        image = open_image(SAMPLES_DIR / row["image"])
        mode = ("alignedvq", "fp16", "int8", "image")[i % 4]
        if mode == "image":
            requests.append(("image", pb.AnswerFromImageRequest(
                image=jpeg_baseline(image, image_size, 90), question=question)))
        else:
            edge = edges[mode]
            requests.append(("codes", edge.messages(edge.chunks([image])[0], question)))
    return requests


def _ask_all_at_once(address, requests):
    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))
    summaries = [None] * len(requests)

    def ask(i):
        kind, request = requests[i]
        if kind == "image":
            responses = list(stub.AnswerFromImage(request, timeout=120))
        else:
            responses = list(stub.AnswerFromCodes(iter(request), timeout=120))
        summaries[i] = responses[-1].summary

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return summaries


@pytest.mark.integration
def test_served_answers_are_identical_with_batching_on_and_off():
    edges = {m: EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, m)
             for m in ("alignedvq", "fp16", "int8")}
    size = edges["fp16"].vision.config.vision_config.image_size
    requests = _mixed_requests(edges, size)
    # A wide window makes the concurrent requests share a batch for sure. Both servers start
    # together, so their model loads overlap; they are asked one after the other.
    settings = {"off": ["--max-batch-size", "1"], "on": ["--batch-window-ms", "300"]}
    with contextlib.ExitStack() as stack:
        servers = {k: stack.enter_context(ServerProcess(*flags)) for k, flags in settings.items()}
        results = {k: _ask_all_at_once(server.wait_ready().address, requests)
                   for k, server in servers.items()}
    assert [s.answer for s in results["on"]] == [s.answer for s in results["off"]]
    assert all(s.answer for s in results["on"])
    assert {s.batch_size for s in results["off"]} == {1}
    assert max(s.batch_size for s in results["on"]) > 1


def test_a_failing_prefill_fails_its_request_and_the_batch_carries_on(cloud, embeddings):
    scheduler = Scheduler(cloud, max_batch_size=4, batch_window_s=0.0)
    scheduler.decoder.eos = set()
    events = []
    running = _job(embeddings[0], QUESTIONS[0], 40, events, "running")
    broken = _job(embeddings[1][:10], QUESTIONS[1], 4, events, "broken")  # 10 of 64 tokens
    scheduler.start()
    try:
        scheduler.submit(running)
        while not any(n == "running" and k == "delta" for n, k, _ in events):
            time.sleep(0.005)
        scheduler.submit(broken)  # joins the running batch, and its prefill raises
        deadline = time.monotonic() + 30
        while not any(k == "done" for _, k, _ in events):
            assert time.monotonic() < deadline, events
            time.sleep(0.01)
    finally:
        scheduler.stop(10)
    outcomes = {(n, k) for n, k, _ in events if k in ("done", "error")}
    assert outcomes == {("running", "done"), ("broken", "error")}
    done = next(v for n, k, v in events if k == "done")
    assert done.tokens == 40


def test_an_arrival_stops_counting_when_its_job_is_submitted(cloud, embeddings):
    """The window waits for requests on their way; one that is submitted must stop counting
    then (not when the server's reading block ends, later), and only once."""
    scheduler = Scheduler(cloud, max_batch_size=4, max_queued=4)  # not started
    with scheduler.on_the_way() as arrival, scheduler.on_the_way():
        assert scheduler.incoming == 2
        scheduler.submit(_job(embeddings[0], "what", 2, [], 0), arrival)
        assert scheduler.incoming == 1 and scheduler.queue_depth() == 1
    assert scheduler.incoming == 0
