"""Property-based fuzzing of request validation and the unpacker: thousands of generated
headers, chunk payloads and message sequences never crash the server's checks and never raise
anything but the documented domain errors (so never a status outside the table)."""

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignedvq.v1 import inference_pb2 as pb
from cloud_server import loader
from cloud_server.config import ServerConfig
from cloud_server.errors import Incompatible, InvalidRequest, ServiceError
from cloud_server.prepare import Preparer
from cloud_server.validation import CodesReader, RequestValidator
from common.wire.messages import fingerprint_bytes
from common.wire.packing import PackingError, unpack

DOCUMENTED = (InvalidRequest, Incompatible)
FUZZ = settings(max_examples=examples(1500), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


CONFIG = ServerConfig(max_new_tokens=16, max_question_chars=200)


@pytest.fixture(scope="module")
def model():
    return loader.load(CONFIG)


@pytest.fixture(scope="module")
def validator(model):
    return RequestValidator(CONFIG, model)


def _valid_header(model) -> dict:
    c = model.cloud
    return dict(vision_fingerprint=fingerprint_bytes(c.vision_fingerprint),
                codec_fingerprint=fingerprint_bytes(c.codec_fingerprint),
                encoding=pb.FEATURE_ENCODING_ALIGNEDVQ, tokens=c.tokens,
                bits=c.codec.config.bits, stages=c.codec.config.stages, question="what?")


def _mutated(valid: dict):
    """Each field either valid or replaced by something arbitrary of its type."""
    def field(name, strategy):
        return st.one_of(st.just(valid[name]), strategy)
    return st.fixed_dictionaries({
        "vision_fingerprint": field("vision_fingerprint", st.binary(max_size=12)),
        "codec_fingerprint": field("codec_fingerprint", st.binary(max_size=12)),
        "encoding": field("encoding", st.integers(-5, 10)),
        "tokens": field("tokens", st.integers(0, 2**32 - 1)),
        "bits": field("bits", st.integers(0, 2**32 - 1)),
        "stages": field("stages", st.integers(0, 2**32 - 1)),
        "question": field("question", st.text(max_size=300)),
        "max_new_tokens": st.integers(0, 2**32 - 1),
    })


def test_header_validation_only_raises_documented_errors(model, validator):
    valid = _valid_header(model)

    @FUZZ
    @given(_mutated(valid))
    def check(fields):
        max_new = fields.pop("max_new_tokens")
        header = pb.CodesHeader(**fields, generation=pb.GenerationParams(max_new_tokens=max_new))
        try:
            request = validator.codes_header(header)
        except DOCUMENTED:
            return
        assert request.mode in ("alignedvq", "fp16", "int8")
        assert request.question.strip() and max_new <= 16
        assert request.max_new_tokens == (max_new or 16)

    check()


@pytest.mark.parametrize("mode", ["alignedvq", "fp16", "int8"])
def test_payload_decoding_only_raises_invalid_request(model, mode):
    preparer = Preparer(model, CONFIG.max_image_pixels)
    expected = model.cloud.encodings[mode].chunk_size(0)

    # Right-sized payloads are too big for hypothesis to draw byte by byte: draw a seed and a
    # few byte overwrites (where NaN/inf fp16 patterns and out-of-range values come from).
    right_size = st.builds(
        lambda seed, edits: _overwrite(np.random.default_rng(seed).bytes(expected), edits),
        st.integers(0, 2**32 - 1),
        st.lists(st.tuples(st.integers(0, expected - 1), st.binary(min_size=1, max_size=4)),
                 max_size=4))
    wrong_size = st.builds(lambda seed, n: np.random.default_rng(seed).bytes(n),
                           st.integers(0, 2**32 - 1), st.integers(0, expected + 8))

    @FUZZ
    @given(st.lists(st.one_of(right_size, wrong_size), max_size=3))
    def check(chunks):
        try:
            embeddings = preparer.codes_embeddings(mode, chunks)
        except InvalidRequest:
            return
        assert embeddings.shape == (model.cloud.image_tokens, model.cloud.text_hidden_size)
        assert torch.isfinite(embeddings).all()

    check()


def _overwrite(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        out[at:at + len(value)] = value
    return bytes(out[:len(data)])


@FUZZ
@given(data=st.binary(max_size=40), count=st.integers(0, 30), bits=st.integers(-2, 20),
       k=st.one_of(st.none(), st.integers(1, 70000)))
def test_unpacker_returns_in_range_indices_or_raises_packing_error(data, count, bits, k):
    try:
        idx = unpack(data, count, bits, k)
    except PackingError:
        return
    assert len(idx) == count
    assert (np.asarray(idx) < (k if k is not None else 1 << bits)).all()


def test_message_sequences_only_raise_documented_errors(model, validator):
    """Any order of headers, chunks and empty messages, through the servicer's reader."""
    valid = _valid_header(model)
    chunk = b"\0" * model.cloud.encodings["alignedvq"].chunk_size(0)
    message = st.one_of(
        st.just(pb.AnswerFromCodesRequest(header=pb.CodesHeader(**valid))),
        st.builds(lambda s, d: pb.AnswerFromCodesRequest(
            chunk=pb.CodesChunk(stage=s, packed_indices=d)),
            st.integers(0, 3), st.one_of(st.just(chunk), st.binary(max_size=100))),
        st.just(pb.AnswerFromCodesRequest()))

    def read(messages):
        reader = CodesReader(validator)
        for m in messages:
            reader.feed(m)
        return reader.finish()

    @FUZZ
    @given(st.lists(message, max_size=5))
    def check(messages):
        try:
            request, chunks = read(messages)
        except ServiceError as e:
            assert isinstance(e, DOCUMENTED), e
            return
        assert request.question and len(chunks) <= request.stages

    check()
