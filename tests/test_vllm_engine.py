"""``cloud-server --engine vllm`` against ``--engine builtin``: real server processes, one of
each for the module (vLLM starts its engine core process and loads the model: slow, so once).

Same greedy answers from both engines (a fresh 600-question split in alignedvq mode; a few
questions in fp16, int8 and image modes). What each engine promises on its own (deltas,
admission, cancellation, SIGTERM): tests/test_engine_contract.py.
"""

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import run_in_process

from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="the vllm extra is not installed (make test installs it)")]

ROWS = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]


@pytest.fixture
def vllm_server(shared_vllm):
    """The session's small vLLM server (tests/conftest.py VLLM_FLAGS)."""
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


def test_600_fresh_questions_get_the_same_greedy_answers_from_both_engines(
        vllm_server, builtin_server, tmp_path):
    from alignedvq.cli import main as alignedvq

    # `alignedvq dataset` in this process: a subprocess would only add a torch start-up.
    made = run_in_process(alignedvq, ["dataset", "--out", tmp_path, "--n", "600", "--seed", "12",
                                      "--quiet"])
    assert made.returncode == 0, made.stderr
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
            image=jpeg_baseline(open_image(SAMPLES_DIR / row["image"]), 128, 90),
            question=row["question"])
        got = [list(stub_of(s).AnswerFromImage(request, timeout=120))[-1].summary.answer
               for s in (vllm_server, builtin_server)]
        assert got[0] == got[1] and got[0]
