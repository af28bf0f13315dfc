"""The generation-engine seam (cloud_server/engines/base.py) as the builtin engine implements
it, in-process on the tiny model: a request streams text deltas then one Finished; admission is
refused when stream() is called; closing a stream frees its batch slot; a drained engine admits
nothing. And `cloud-server --engine vllm` without vLLM exits 2 naming the extra."""

import asyncio
import importlib.util

import pytest

from cloud_server.config import ServerConfig
from cloud_server.engines.base import Finished, GenerationRequest
from cloud_server.engines.builtin import BuiltinEngine
from cloud_server.errors import InvalidRequest, Overloaded, ShuttingDown
from common.imaging.policy import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from cloud_server.cloud_half import CloudHalf
from common.split.vision import features_at_cut
from edge_agent.torch_edge import EdgeHalf

QUESTION = "how many objects are there?"


@pytest.fixture(scope="module")
def cloud():
    return CloudHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)


@pytest.fixture(scope="module")
def features():
    edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)
    return features_at_cut(edge.vision, edge.image_processor,
                           [open_image(SAMPLES_DIR / "images" / "sample2.png")])


def _request(cloud, features, max_new=8, name="r"):
    return GenerationRequest(name, QUESTION, max_new,
                             lambda: cloud.image_embeddings(features)[0])


async def _collect(stream):
    return [item async for item in stream]


def test_a_request_streams_deltas_then_one_finished(cloud, features):
    async def run():
        engine = BuiltinEngine(cloud, max_batch_size=4, batch_window_s=0)
        await engine.start()
        try:
            items = await _collect(engine.stream(_request(cloud, features)))
            bad = GenerationRequest("bad", QUESTION, 4, lambda: (_ for _ in ()).throw(
                InvalidRequest("bad payload")))
            with pytest.raises(InvalidRequest, match="bad payload"):
                await _collect(engine.stream(bad))
        finally:
            await engine.drain()
        return items
    items = asyncio.run(run())
    *deltas, finished = items
    assert isinstance(finished, Finished) and all(isinstance(d, str) for d in deltas)
    assert "".join(deltas) == finished.text == cloud.answer(features, [QUESTION], 8)[0]
    assert finished.batch_size == 1 and finished.tokens >= 1


def test_admission_is_refused_when_stream_is_called(cloud, features):
    async def run():
        engine = BuiltinEngine(cloud, max_batch_size=1, max_queued=1)  # not started
        first = engine.stream(_request(cloud, features))
        with pytest.raises(Overloaded, match="--max-queued"):
            engine.stream(_request(cloud, features))  # no await needed to be refused
        await first.aclose()
        await engine.drain()
        with pytest.raises(ShuttingDown):
            engine.stream(_request(cloud, features))
    asyncio.run(run())


def test_closing_a_stream_frees_its_batch_slot(cloud, features):
    async def run():
        engine = BuiltinEngine(cloud, max_batch_size=4, batch_window_s=0)
        engine.scheduler.decoder.eos = set()  # runs to max_new_tokens unless aborted
        await engine.start()
        try:
            stream = engine.stream(_request(cloud, features, max_new=4000))
            first = await stream.__anext__()
            assert isinstance(first, str)
            assert engine.stats().running == 1
            await stream.aclose()
            for _ in range(1000):  # the row leaves at the next token step
                if engine.stats().running == 0:
                    break
                await asyncio.sleep(0.01)
            assert engine.stats().running == 0 and engine.stats().queue_depth == 0
        finally:
            await engine.drain()
    asyncio.run(run())


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_engine_vllm_without_vllm_exits_2_naming_the_extra(capsys):
    from cloud_server.server import serve

    assert asyncio.run(serve(ServerConfig(port=0, engine="vllm"))) == 2
    err = capsys.readouterr().err
    assert "--engine vllm" in err and "alignedvq[vllm]" in err
