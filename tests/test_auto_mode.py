"""``edge-agent --mode auto`` (issue 22): the chooser on recorded profiles picks what the numbers
say, the link is learned from probes and calls, the cache survives runs, and over a very slow
shaped link a real agent sends codes."""

import json

import pytest
from conftest import edge_agent_in_process

from alignedvq.benchmarks.netlink import ProxyLink
from common.paths import SAMPLES_DIR
from edge_agent.auto import AutoCache
from edge_agent.latency_model import LatencyModel, Link, Path

IMAGE, EARLY, LATE = Path(None), Path(1), Path(4)

# Recorded on this machine (one core): the embedded model's edge (torch) and, for the 7B
# geometry, CLIP-L/336 blocks at ~0.6 s each with the JPEG-90 upload of a 336-px photo.
TINY = {"edge_ms": {"image": 1.0, "codes@1": 3.5, "codes@4": 11.0},
        "payloads": {IMAGE: 3381, EARLY: 153, LATE: 159}, "server_ms": 60.0}
LLAVA_7B = {"edge_ms": {"image": 6.0, "codes@1": 650.0, "codes@23": 15_000.0},
            "payloads": {IMAGE: 30_000, EARLY: 900, Path(23): 900}, "server_ms": 400.0}


def model_for(profile, rtt_ms: float, mbit: float) -> LatencyModel:
    model = LatencyModel(Link(rtt_ms, mbit * 1000, stale=False), dict(profile["edge_ms"]))
    model.server_ms = {name: profile["server_ms"] for name in profile["edge_ms"]}
    return model


@pytest.mark.parametrize("profile, rtt_ms, mbit, best", [
    (TINY, 100, 0.25, EARLY),     # 3.4 KB at 250 kbit/s is 108 ms: any codes win, the cheap cut
    # At 100 Mbit/s the upload (0.3 ms on the wire, 1 ms to encode) is 2.7 % faster than
    # 3.5 ms of one block: a tie, which goes to the fewest bytes.
    (TINY, 20, 100, EARLY),
    (TINY, 1, 100, IMAGE),        # ... and 10 % faster on a LAN's 1 ms round trip: the upload
    (LLAVA_7B, 20, 0.25, EARLY),  # 30 KB is 960 ms; one block costs 650
    (LLAVA_7B, 20, 1, IMAGE),     # 240 ms: the upload, even against one block
    (LLAVA_7B, 100, 100, IMAGE),
])
def test_it_picks_the_path_the_numbers_say(profile, rtt_ms, mbit, best):
    chosen, predictions = model_for(profile, rtt_ms, mbit).choose(profile["payloads"])
    assert chosen.path == best
    assert [p.total_ms for p in predictions] == sorted(p.total_ms for p in predictions)
    # Each prediction is its terms' sum: edge + round trip + bytes at the rate + server.
    for p in predictions:
        expected = (profile["edge_ms"][p.path.name] + rtt_ms
                    + p.payload_bytes * 8 / (mbit * 1000) + profile["server_ms"])
        assert p.total_ms == pytest.approx(expected)


def test_a_tie_goes_to_the_fewest_bytes_and_only_a_tie():
    model = LatencyModel(Link(10, 1e7, stale=False), {"image": 100.0, "codes@1": 102.9,
                                                       "codes@4": 103.5})
    payloads = {IMAGE: 3000, EARLY: 160, LATE: 150}
    assert model.choose(payloads)[0].path == EARLY    # 2.9 % slower: tied; 4 is 3.5 %: not
    model.edge_ms["codes@1"] = 104.0
    assert model.choose(payloads)[0].path == IMAGE


def test_a_link_measured_long_ago_is_probed_again():
    from edge_agent.latency_model import LINK_TTL_S

    link = Link()
    link.probed(20.0, 40.0, 3000, now=1000.0)
    assert link.known(now=1000.0 + LINK_TTL_S) and not link.known(now=1001.0 + LINK_TTL_S)


def test_a_path_the_server_has_not_answered_is_given_the_others_time():
    model = model_for(TINY, 20, 10)
    model.server_ms = {"image": 80.0, "codes@4": 60.0}
    assert model.predict(EARLY, 153).server_ms == 70.0
    assert LatencyModel(Link(20, 1000, stale=False), {"image": 1.0}).predict(
        IMAGE, 100).server_ms == 0.0


def test_probes_measure_the_round_trip_and_the_throughput():
    link = Link()
    assert not link.known()
    link.probed(empty_ms=40.0, padded_ms=40.0 + 108.2, padded_bytes=3381)  # 250 kbit/s
    assert link.known() and link.rtt_ms == 40.0
    assert link.kbit_per_s == pytest.approx(250, rel=0.01)
    link.probed(empty_ms=1.0, padded_ms=0.9, padded_bytes=3381)  # faster than the timer
    assert link.kbit_per_s == pytest.approx(1e7)


def test_calls_teach_the_link_and_a_far_miss_asks_for_a_new_probe():
    link = Link(20.0, 1000.0, stale=False)
    link.observed(150, 30.0)          # codes: ~all round trip, so they move the rtt
    assert link.rtt_ms == pytest.approx(0.7 * 20 + 0.3 * (30 - 1.2)) and link.known()
    rtt = link.rtt_ms
    link.observed(30_000, rtt + 480.0)   # an upload at 500 kbit/s moves the throughput
    assert link.rtt_ms == rtt and link.kbit_per_s < 1000 and link.known()
    link.observed(150, 500.0)            # a codes call 20x slower than predicted
    assert not link.known()


def test_one_slow_start_up_does_not_count_as_the_paths_compute():
    model = model_for(TINY, 20, 10)
    model.observe_call(EARLY, 153, edge_ms=900.0, server_ms=60.0, total_ms=990.0,
                       edge_warm=False)
    assert model.edge_ms["codes@1"] == 3.5
    model.observe_call(EARLY, 153, edge_ms=5.5, server_ms=60.0, total_ms=86.0)
    assert model.edge_ms["codes@1"] == pytest.approx(0.7 * 3.5 + 0.3 * 5.5)


def test_the_cache_keeps_profiles_per_encoder_and_state_per_server(tmp_path):
    from alignedvq.v1 import inference_pb2 as pb

    path = tmp_path / "cache" / "auto.json"
    keys = {"codes@1": "torch|cpu|float32|aa", "image": "image"}
    model = model_for(TINY, 20, 10)
    AutoCache(path).store("host:1", pb.GetServerInfoResponse(model_id="m"), model, keys)
    again = AutoCache(path)
    assert again.info("host:1").model_id == "m" and again.info("host:2") is None
    loaded = again.model("host:1", keys)
    assert loaded.edge_ms == {"codes@1": 3.5, "image": 1.0}
    assert loaded.link == model.link and loaded.server_ms == model.server_ms
    # Another server: the edge's profile carries over, nothing of the first server's link does.
    other = again.model("host:2", keys)
    assert other.edge_ms == loaded.edge_ms and not other.link.known()
    path.write_text("{not json")
    assert AutoCache(path).info("host:1") is None  # an unreadable cache starts afresh


def test_a_cache_that_cannot_be_written_costs_no_answer(tmp_path, capsys):
    from alignedvq.v1 import inference_pb2 as pb

    (tmp_path / "a-file").write_text("")
    cache = AutoCache(tmp_path / "a-file" / "auto.json")  # its folder cannot be made
    keys = {"codes@1": "torch|cpu|float32|aa"}
    cache.store("host:1", pb.GetServerInfoResponse(model_id="m"), model_for(TINY, 20, 10), keys)
    assert "cannot write the cache" in capsys.readouterr().err
    assert cache.info("host:1").model_id == "m"  # kept in memory
    cache.store("host:1", pb.GetServerInfoResponse(model_id="m"), model_for(TINY, 20, 10), keys)
    assert capsys.readouterr().err == ""  # said once


@pytest.mark.integration
def test_over_a_very_slow_link_the_agent_sends_codes(default_server, tmp_path):
    """64 kbit/s, 40 ms round trip: the 3.4 KB upload would take ~420 ms on the wire, codes
    ~20 ms; the agent probes, profiles both split points, then sends codes, and says so."""
    row = json.loads((SAMPLES_DIR / "questions.jsonl").read_text().splitlines()[0])
    with ProxyLink(one_way_delay_ms=20) as link:
        link.set_rate(0.064)
        target = link.target(default_server.address)
        runs = [edge_agent_in_process(
            "--server", target, "--image", str(SAMPLES_DIR / row["image"]), "--question",
            row["question"], "--mode", "auto", "--auto-cache", str(tmp_path / "auto.json"),
            "--json") for _ in range(2)]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first["probed"] and sorted(first["profiled"]) == ["codes@1", "codes@4"]
    for out in (first, second):
        assert out["mode"] == "alignedvq" and out["path"] == f"codes@{out['split_layer']}"
        assert out["answer"] == row["answer"]
        image = next(p for p in out["predictions"] if p["path"] == "image")
        assert image["network_ms"] > 300 > out["network_ms"]
    assert not second["probed"] and not second["profiled"]  # all of it came from the cache


@pytest.mark.integration
def test_auto_runs_the_onnx_edge_too(default_server, exported_edge, tmp_path):
    """--runtime onnx: the exported graph's split point (read from its edge.json) is one of the
    paths; over a slow link it is taken."""
    row = json.loads((SAMPLES_DIR / "questions.jsonl").read_text().splitlines()[2])
    with ProxyLink(one_way_delay_ms=5) as link:
        link.set_rate(0.064)
        out = edge_agent_in_process(
            "--server", link.target(default_server.address), "--image",
            str(SAMPLES_DIR / row["image"]), "--question", row["question"], "--mode", "auto",
            "--runtime", "onnx", "--onnx-dir", str(exported_edge),
            "--auto-cache", str(tmp_path / "auto.json"), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert sorted(p["path"] for p in result["predictions"]) == ["codes@4", "image"]
    assert (result["path"], result["answer"]) == ("codes@4", row["answer"])
