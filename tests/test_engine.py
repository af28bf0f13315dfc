"""The generation-engine seam (cloud_server/engines/base.py) as the builtin engine implements
it, in-process on the tiny model: a request streams text deltas then one Finished; generate()
admits in its first step (calling it does nothing); closing or cancelling a request frees its
batch slot; a drained engine admits nothing. And `cloud-server --engine vllm` without vLLM
exits 2 naming the extra."""

import asyncio
import importlib.util

import pytest

from cloud_server.cloud_half import CloudHalf
from cloud_server.config import ServerConfig
from cloud_server.engines.base import EngineStats, Finished, GenerationRequest
from cloud_server.engines.builtin import BuiltinEngine
from cloud_server.errors import InvalidRequest, Overloaded, ShuttingDown
from common.imaging.policy import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
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
        await engine.start(_request(cloud, features, 2, "warm-up"))
        try:
            items = await _collect(engine.generate(_request(cloud, features)))
            bad = GenerationRequest("bad", QUESTION, 4, lambda: (_ for _ in ()).throw(
                InvalidRequest("bad payload")))
            with pytest.raises(InvalidRequest, match="bad payload"):
                await _collect(engine.generate(bad))
        finally:
            await engine.drain()
        return items
    items = asyncio.run(run())
    *deltas, finished = items
    assert isinstance(finished, Finished) and all(isinstance(d, str) for d in deltas)
    assert "".join(deltas) == finished.text == cloud.answer(features, [QUESTION], 8)[0]
    assert finished.batch_size == 1 and finished.tokens >= 1


async def _until(condition, seconds=10.0):
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def test_admission_is_the_first_step_of_generate(cloud, features):
    async def run():
        engine = BuiltinEngine(cloud, max_batch_size=1, max_queued=1)  # not started
        engine.generate(_request(cloud, features))  # never iterated: never admitted
        assert engine.stats().queue_depth == 0
        # Its first item never comes (nothing runs the queue): its first step runs as a task.
        first = asyncio.ensure_future(anext(engine.generate(_request(cloud, features))))
        await _until(lambda: engine.stats().queue_depth == 1)
        with pytest.raises(Overloaded, match="--max-queued"):
            await anext(engine.generate(_request(cloud, features)))
        first.cancel()  # the consumer cancelled: its job is cancelled, not left to run
        with pytest.raises(asyncio.CancelledError):
            await first
        assert engine.scheduler.pending[0].cancelled.is_set()
        await engine.drain()
        with pytest.raises(ShuttingDown):
            await anext(engine.generate(_request(cloud, features)))
    asyncio.run(run())


def test_closing_or_cancelling_requests_frees_their_batch_slots(cloud, features):
    """In-process, where a request can be made to run for minutes (no end-of-sequence token):
    each stopped request must leave the batch, or the stats never return to 0."""
    async def run():
        engine = BuiltinEngine(cloud, max_batch_size=4, batch_window_s=0)
        await engine.start(_request(cloud, features, 2, "warm-up"))
        engine.scheduler.decoder.eos = set()  # runs to max_new_tokens unless aborted
        try:
            generations = [engine.generate(_request(cloud, features, 4000, f"r{i}"))
                           for i in range(3)]
            for g in generations:
                assert isinstance(await anext(g), str)  # generating
            assert engine.stats().running == 3
            await generations[0].aclose()  # as the service closes it (client gone)
            cancelled = [asyncio.ensure_future(anext(g)) for g in generations[1:]]
            await asyncio.sleep(0)
            for task in cancelled:  # as a deadline cancels the reading task
                task.cancel()
            await asyncio.gather(*cancelled, return_exceptions=True)
            await _until(lambda: engine.stats() == EngineStats(queue_depth=0, running=0))
            *deltas, finished = await _collect(engine.generate(_request(cloud, features, 4)))
            assert finished.tokens == 4 and "".join(deltas) == finished.text
        finally:
            await engine.drain()
    asyncio.run(run())


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_engine_vllm_without_vllm_exits_2_naming_the_extra(capsys):
    from cloud_server.server import serve

    assert asyncio.run(serve(ServerConfig(port=0, engine="vllm"))) == 2
    err = capsys.readouterr().err
    assert "--engine vllm" in err and "alignedvq[vllm]" in err
