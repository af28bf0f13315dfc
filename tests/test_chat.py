"""Conversations and sampling over the wire, on the session's small servers (each engine):
a follow-up names its image by handle and sends no image bytes, through either RPC, and is
answered as the same question with the image sent again; bad handles get clean statuses and
the server keeps serving; seeded sampling repeats; the handle metrics count; and
``edge-agent --chat`` (in this process) holds a conversation, sending the image again when the
server no longer knows its handle. (The cache and handles in-process: test_conversations.py.)"""

import io
import json
import re
import urllib.request

import grpc
import pytest
from conftest import edge_agent_in_process

from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import jpeg_baseline, open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.torch_edge import EdgeHalf

pytestmark = pytest.mark.integration  # the shared cloud-server processes

IMAGE = SAMPLES_DIR / "images" / "sample2.png"
FIRST, SECOND = "how many objects are there?", "what shape is the red object?"


@pytest.fixture(scope="module")
def edge():
    return EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)


def stub_of(server):
    return pb_grpc.InferenceServiceStub(grpc.insecure_channel(server.address))


def codes(edge, question=FIRST, **turn):
    messages = edge.messages(edge.chunks([open_image(IMAGE)])[0], question)
    header = messages[0].header
    for turn_ in turn.get("history", ()):
        header.history.add(question=turn_[0], answer=turn_[1])
    if "generation" in turn:
        header.generation.CopyFrom(turn["generation"])
    return messages


def follow_up(handle, question=SECOND, history=(), generation=None):
    header = pb.CodesHeader(question=question, image_handle=handle, generation=generation)
    for q, a in history:
        header.history.add(question=q, answer=a)
    return [pb.AnswerFromCodesRequest(header=header)]


def ask(stub, messages) -> pb.AnswerSummary:
    return list(stub.AnswerFromCodes(iter(messages), timeout=120))[-1].summary


def test_a_follow_up_sends_no_image_and_answers_as_if_it_had(small_server, edge):
    stub = stub_of(small_server)
    first = ask(stub, codes(edge))
    assert first.image_handle and first.cached_tokens == 0
    history = [(FIRST, first.answer)]
    later = ask(stub, follow_up(first.image_handle, history=history))
    # The same question with the image sent again, the conversation before it: the same answer.
    resent = ask(stub, codes(edge, SECOND, history=history))
    assert later.answer == resent.answer and later.answer
    assert later.cached_tokens > 0
    if "vllm" not in small_server.proc.args:  # vLLM's prefix cache serves the resent one too
        assert resent.cached_tokens == 0
    assert later.image_handle == first.image_handle == resent.image_handle
    assert later.payload_bytes < 100 < first.payload_bytes  # a question and 16 B of handle
    assert not later.HasField("split_layer") and first.split_layer == 4
    # The handle names the image, whichever RPC asks: an image-mode edge follows up by
    # AnswerFromImage.
    upload = pb.AnswerFromImageRequest(question=SECOND, image_handle=first.image_handle)
    upload.history.add(question=FIRST, answer=first.answer)
    by_image_rpc = list(stub.AnswerFromImage(upload, timeout=120))[-1].summary
    assert by_image_rpc.answer == later.answer and by_image_rpc.cached_tokens > 0


def test_bad_handles_get_clean_statuses_and_the_server_keeps_serving(small_server, edge):
    stub = stub_of(small_server)
    handle = ask(stub, codes(edge)).image_handle
    for forged in (handle[:-1], bytes([handle[0] ^ 0x80]) + handle[1:], bytes(16), b"x"):
        with pytest.raises(grpc.RpcError) as e:
            ask(stub, follow_up(forged))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "send the image again" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        ask(stub, follow_up(bytes(65)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:  # a follow-up with a chunk after it
        ask(stub, follow_up(handle) + codes(edge)[1:])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        list(stub.AnswerFromImage(pb.AnswerFromImageRequest(
            image=b"\x89PNG", image_handle=handle, question=SECOND), timeout=60))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ask(stub, follow_up(handle, history=[(FIRST, "five")])).answer


def test_seeded_sampling_repeats_and_every_sampled_answer_reports_its_seed(small_server,
                                                                           edge):
    stub = stub_of(small_server)
    hot = pb.GenerationParams(temperature=2.0, seed=77, top_k=20, top_p=0.95)
    one, two = (ask(stub, codes(edge, generation=hot)) for _ in range(2))
    assert one.answer == two.answer and one.seed == two.seed == 77
    drawn = ask(stub, codes(edge, generation=pb.GenerationParams(temperature=1.0)))
    assert drawn.HasField("seed")
    again = ask(stub, codes(edge, generation=pb.GenerationParams(temperature=1.0,
                                                                 seed=drawn.seed)))
    assert again.answer == drawn.answer
    greedy = ask(stub, codes(edge))
    assert not greedy.HasField("seed") and greedy.finish_reason == pb.FINISH_REASON_END
    short = ask(stub, codes(edge, generation=pb.GenerationParams(max_new_tokens=1)))
    assert short.finish_reason == pb.FINISH_REASON_LENGTH
    stopped = ask(stub, codes(edge, generation=pb.GenerationParams(stop=["ve"])))
    assert (stopped.answer, stopped.finish_reason) == ("fi", pb.FINISH_REASON_STOP_STRING)
    with pytest.raises(grpc.RpcError) as e:
        ask(stub, codes(edge, generation=pb.GenerationParams(temperature=3.0)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in \
        e.value.details()


def scrape(server) -> str:
    url = re.search(r"metrics on (\S+)", server.log()).group(1)
    return urllib.request.urlopen(url, timeout=10).read().decode()


def sample(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def test_the_handle_metrics_count_hits_and_misses(small_server, edge):
    stub = stub_of(small_server)
    hit, miss = ('alignedvq_image_handle_lookups_total{result="hit"}',
                 'alignedvq_image_handle_lookups_total{result="miss"}')
    before = scrape(small_server)
    handle = ask(stub, codes(edge)).image_handle
    ask(stub, follow_up(handle))
    with pytest.raises(grpc.RpcError):
        ask(stub, follow_up(bytes(16)))
    after = scrape(small_server)
    assert sample(after, hit) == sample(before, hit) + 1
    assert sample(after, miss) == sample(before, miss) + 1
    assert sample(after, "alignedvq_image_cache_bytes") > 0
    assert sample(after, "alignedvq_image_cache_entries") >= 1


def chat(server, monkeypatch, lines, *args):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{q}\n" for q in lines)))
    out = edge_agent_in_process("--server", server.address, "--image", IMAGE, "--chat",
                                "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_edge_agent_chat_sends_the_image_once(small_server, monkeypatch):
    turns = chat(small_server, monkeypatch, [SECOND, "", "where is the green object?"],
                 "--question", FIRST, "--temperature", "0.5", "--seed", "3", "--mode",
                 "alignedvq")
    assert [t["turn"] for t in turns] == [1, 2, 3]  # the blank line is skipped
    assert turns[0]["mode"] == "alignedvq" and turns[0]["image_bytes"] > 0
    for t in turns[1:]:
        assert t["mode"] == "followup" and t["image_bytes"] == 0 and t["cached_tokens"] > 0
        assert t["payload_bytes"] < turns[0]["payload_bytes"]
    assert all(t["seed"] == 3 and t["answer"] for t in turns)
    assert len({t["request_id"] for t in turns}) == 3  # one request each
    uploads = chat(small_server, monkeypatch, [FIRST, SECOND], "--mode", "image")
    assert [t["mode"] for t in uploads] == ["image", "followup"]
    assert uploads[1]["image_bytes"] == 0 and uploads[1]["cached_tokens"] > 0


def test_edge_agent_chat_sends_the_image_again_when_the_handle_is_gone(small_server, capsys):
    from edge_agent.chat import Chat
    from edge_agent.cli import ask as ask_with_image
    from edge_agent.cli import build, parse

    session = build(parse(["--server", small_server.address, "--image", str(IMAGE), "--chat",
                           "--json", "--mode", "alignedvq"]))
    conversation = Chat(session, lambda q, h, stream: ask_with_image(session, q, h, stream))
    first = conversation.ask(FIRST)
    conversation.handle, conversation.history = b"expired-handle", [(FIRST, first.answer)]
    again = conversation.ask(SECOND)
    assert again.mode == "alignedvq" and again.image_bytes > 0 and again.image_handle
    assert "sending it again" in capsys.readouterr().err
