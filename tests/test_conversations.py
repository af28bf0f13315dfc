"""Conversations in-process: the image cache's byte bound, LRU order and TTL; handles made by
the server and scoped to the caller; forged, truncated, random and oversized handles refused
with the documented statuses; a follow-up's message order; the handle metrics.
(Over the wire: tests/test_chat.py; across bearer tokens: tests/test_security.py.)"""

import random

import pytest
import torch

from alignedvq.v1 import inference_pb2 as pb
from cloud_server.config import ServerConfig
from cloud_server.conversations import (
    HANDLE_BYTES,
    MAX_HANDLE_BYTES,
    Conversations,
    content_digest,
)
from cloud_server.errors import Incompatible, InvalidRequest
from cloud_server.image_cache import ImageCache
from cloud_server.metrics import Metrics
from cloud_server.security import BearerTokens
from cloud_server.validation import FOLLOW_UP, CodesReader, RequestValidator


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def embeddings(n_tokens: int, fill: float = 0.0) -> torch.Tensor:
    return torch.full((n_tokens, 8), fill)  # float32: 32 bytes per token


def test_the_cache_holds_its_byte_bound_under_1000_distinct_images():
    bound = 100_000
    cache = ImageCache(bound, ttl_s=60)
    rng = random.Random(0)
    sizes = []
    for i in range(1000):
        value = embeddings(rng.randint(1, 300))  # 32 B to 9.6 kB each
        sizes.append(value.numel() * 4)
        assert cache.put(i.to_bytes(4, "little"), "caller", value)
        stats = cache.stats()
        assert stats.bytes <= bound, i
    # The bytes reported are what the entries still held weigh, and the newest are the ones
    # kept: exactly the longest suffix of puts that fits.
    held = [i for i in range(1000) if cache.get(i.to_bytes(4, "little"), "caller") is not None]
    kept, total = 0, 0
    for size in reversed(sizes):
        if total + size > bound:
            break
        kept, total = kept + 1, total + size
    assert held == list(range(1000 - kept, 1000))
    stats = cache.stats()
    assert stats.bytes == total and stats.entries == kept
    assert stats.evicted == 1000 - kept and stats.hits == kept and stats.misses == 1000 - kept
    assert not cache.put(b"too big", "caller", embeddings(bound // 32 + 1))  # alone over it


def test_lru_order_ttl_and_owners():
    clock = Clock()
    cache = ImageCache(3 * 32 * 10, ttl_s=10, clock=clock)  # room for three 10-token entries
    for key in (b"a", b"b", b"c"):
        cache.put(key, "alice", embeddings(10))
    assert cache.get(b"a", "alice") is not None  # a is now the most recently used
    cache.put(b"d", "alice", embeddings(10))      # evicts b, the least recently used
    assert cache.get(b"b", "alice") is None and cache.get(b"c", "alice") is not None
    assert cache.get(b"a", "bob") is None         # another caller's: a miss...
    assert cache.get(b"a", "alice") is not None   # ...that leaves it to its owner
    clock.now = 9.0
    assert cache.get(b"d", "alice") is not None   # used at 9: lives until 19
    clock.now = 15.0
    stats = cache.stats()                          # a and c (last used at 0) have expired
    assert (stats.entries, stats.expired, stats.evicted) == (1, 2, 1)
    assert cache.get(b"d", "alice") is not None
    clock.now = 100.0
    assert cache.get(b"d", "alice") is None and cache.stats().bytes == 0


def conversations(max_bytes=1 << 20, key=None) -> Conversations:
    return Conversations(ImageCache(max_bytes, ttl_s=60), image_tokens=64, key=key)


def first_request(conv: Conversations, identity: str, payload: bytes):
    prepare, ref = conv.remember(lambda: embeddings(64, 1.0), identity, "codes/alignedvq/4",
                                 [payload])
    prepare()  # on the engine's thread in the server: hashes, keeps, reports the handle
    return ref


def test_handles_are_the_servers_and_scoped_to_the_caller():
    conv = conversations()
    alice = first_request(conv, "token:alice", b"image")
    assert len(alice.handle) == HANDLE_BYTES and alice.cached_tokens == 0
    assert first_request(conv, "token:alice", b"image").handle == alice.handle  # same content
    bob = first_request(conv, "token:bob", b"image")
    assert bob.handle != alice.handle  # the same image: another caller, another handle
    assert first_request(conv, "token:alice", b"other").handle != alice.handle
    assert conversations(key=b"k" * 32).handle("", b"d") != conversations(
        key=b"j" * 32).handle("", b"d")  # another server (key): another handle
    prepare, ref = conv.recall(alice.handle, "token:alice")
    assert torch.equal(prepare(), embeddings(64, 1.0)) and ref.cached_tokens == 64
    with pytest.raises(Incompatible, match="send the image again"):
        conv.recall(alice.handle, "token:bob")  # a leaked handle resolves for nobody else
    with pytest.raises(Incompatible, match="send the image again"):
        conv.recall(alice.handle, "")


@pytest.mark.parametrize("forged", [
    lambda h: h[:-1], lambda h: h[:1], lambda h: b"", lambda h: bytes([h[0] ^ 1]) + h[1:],
    lambda h: h + b"\0", lambda h: random.Random(1).randbytes(HANDLE_BYTES),
    lambda h: bytes(MAX_HANDLE_BYTES)])
def test_forged_truncated_and_random_handles_are_unknown(forged):
    conv = conversations()
    handle = first_request(conv, "", b"image").handle
    with pytest.raises(Incompatible, match="unknown or expired image handle"):
        conv.recall(forged(handle), "")
    assert conv.recall(handle, "")[1].handle == handle  # and the real one still works


def test_an_oversized_handle_is_invalid_and_digests_are_length_prefixed():
    with pytest.raises(InvalidRequest, match="at most 64"):
        conversations().recall(bytes(MAX_HANDLE_BYTES + 1), "")
    assert content_digest("k", [b"ab", b"c"]) != content_digest("k", [b"a", b"bc"])


def test_a_server_keeping_no_images_issues_no_handles():
    conv = conversations(max_bytes=0)
    assert first_request(conv, "", b"image").handle is None
    with pytest.raises(Incompatible):
        conv.recall(bytes(HANDLE_BYTES), "")


def test_bearer_token_identities_differ_per_token_and_name_no_token():
    class Tokens:
        def current(self):
            return [b"alpha", b"beta"]

    check = BearerTokens(Tokens()).check
    a = check([("authorization", "Bearer alpha")])
    assert a == check([("authorization", "Bearer alpha")])
    assert a != check([("authorization", "Bearer beta")]) and "alpha" not in a


CONFIG = ServerConfig(max_question_chars=20, max_history_turns=2)


def follow_up_header(**fields) -> pb.AnswerFromCodesRequest:
    return pb.AnswerFromCodesRequest(header=pb.CodesHeader(
        question="and?", image_handle=b"h" * HANDLE_BYTES, **fields))


def test_a_follow_up_is_its_header_alone():
    # The model is never consulted for a follow-up: nothing in it describes features.
    reader = CodesReader(RequestValidator(CONFIG, model=None))
    reader.feed(follow_up_header(history=[pb.Turn(question="q", answer="a")]))
    request, chunks = reader.finish()
    assert (request.mode, request.stages, chunks) == (FOLLOW_UP, 0, [])
    assert request.history == (("q", "a"),) and request.handle == b"h" * HANDLE_BYTES
    with pytest.raises(InvalidRequest, match="a follow-up sends the header alone"):
        reader.feed(pb.AnswerFromCodesRequest(chunk=pb.CodesChunk(stage=0)))


@pytest.mark.parametrize("fields, message", [
    ({"history": [pb.Turn(question="q", answer="a")] * 3}, "at most 2 are accepted"),
    ({"history": [pb.Turn(question=" ", answer="a")]}, "history turn 0 has an empty question"),
    ({"history": [pb.Turn(question="q", answer="a" * 21)]}, "history turn 0's answer has 21"),
    ({"generation": pb.GenerationParams(top_p=2)}, "top_p must be in (0, 1]"),
])
def test_history_and_sampling_are_checked_on_follow_ups_too(fields, message):
    with pytest.raises(InvalidRequest) as e:
        CodesReader(RequestValidator(CONFIG, model=None)).feed(follow_up_header(**fields))
    assert message in str(e.value)


def test_an_upload_with_both_an_image_and_a_handle_is_refused():
    validator = RequestValidator(CONFIG, model=None)
    with pytest.raises(InvalidRequest, match="both an image and an image_handle"):
        validator.image_request(pb.AnswerFromImageRequest(image=b"x", question="q",
                                                          image_handle=b"h"))
    assert validator.image_request(pb.AnswerFromImageRequest(
        question="q", image_handle=b"h")).mode == FOLLOW_UP


def test_the_handle_metrics_count_what_happened():
    metrics = Metrics()
    conv = Conversations(ImageCache(64 * 8 * 4, ttl_s=60), image_tokens=64)  # one image fits
    metrics.watch_images(conv.cache)
    first = first_request(conv, "", b"one")
    conv.recall(first.handle, "")
    with pytest.raises(Incompatible):
        conv.recall(b"forged", "")
    first_request(conv, "", b"two")  # evicts the first

    def sample(name, **labels):
        return metrics.registry.get_sample_value(name, labels)

    assert sample("alignedvq_image_handle_lookups_total", result="hit") == 1
    assert sample("alignedvq_image_handle_lookups_total", result="miss") == 1
    assert sample("alignedvq_image_cache_evictions_total", reason="lru") == 1
    assert sample("alignedvq_image_cache_evictions_total", reason="expired") == 0
    assert sample("alignedvq_image_cache_bytes") == 64 * 8 * 4
    assert sample("alignedvq_image_cache_entries") == 1
