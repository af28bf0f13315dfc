"""edge-agent and a server that is not up yet: it waits (default) or fails fast (--no-wait)."""

import json
import re
import socket
import subprocess
import urllib.request

import pytest
from conftest import cli

from alignedvq.server_process import ServerProcess
from common.paths import SAMPLES_DIR
from edge_agent.cli import main

pytestmark = pytest.mark.integration  # real servers or processes

IMAGE = SAMPLES_DIR / "images" / "sample2.png"
QUESTION, ANSWER = "how many objects are there?", "five"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_edge_agent_started_before_the_server_gets_the_answer_once_it_is_up():
    port = free_port()
    edge = subprocess.Popen(cli("edge-agent") + ["--server", f"127.0.0.1:{port}", "--image",
                                                 str(IMAGE), "--question", QUESTION, "--json",
                                                 "--mode", "alignedvq", "--timeout", "240"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The agent says when it starts waiting: only then is the server started (on the port
        # it is waiting for; the later --port wins over ServerProcess's own --port 0).
        waiting = edge.stderr.readline()
        assert waiting.startswith(f"edge-agent: waiting for 127.0.0.1:{port} (UNAVAILABLE"), \
            waiting
        with ServerProcess("--port", str(port)) as server:
            out, err = edge.communicate(timeout=300)
        assert edge.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["answer"] == ANSWER
        # Calls refused while the model loads are retried with backoff (0.1 s doubling to 2 s),
        # not in a tight loop (an upper bound: the log reader may lag, never run ahead).
        assert server.log().count("the model is still loading") < 60
    finally:
        edge.kill()


def test_no_wait_fails_fast_and_waiting_is_bounded_by_timeout(capsys):
    port = free_port()
    common = ["--server", f"127.0.0.1:{port}", "--image", str(IMAGE), "--question", QUESTION,
              "--mode", "image"]
    assert main([*common, "--no-wait"]) == 1
    err = capsys.readouterr().err
    assert "edge-agent: UNAVAILABLE" in err and "waiting" not in err
    assert "without TLS" not in err  # no token, no warning
    assert main([*common, "--timeout", "1.5"]) == 1
    err = capsys.readouterr().err
    assert "waiting for" in err and "within --timeout 1.5 s" in err


def test_a_token_sent_without_tls_is_warned_about(tmp_path, capsys):
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token\n")
    assert main(["--server", f"127.0.0.1:{free_port()}", "--image", str(IMAGE), "--question",
                 QUESTION, "--mode", "image", "--no-wait", "--auth-token-file",
                 str(tokens)]) == 1
    assert "warning: sending the bearer token without TLS" in capsys.readouterr().err


def refused(metrics_port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    found = re.search(r'alignedvq_requests_total\{[^}]*code="RESOURCE_EXHAUSTED"[^}]*\} (\S+)',
                      text.decode())
    return int(float(found.group(1))) if found else 0


@pytest.fixture(scope="module", autouse=True)
def refusing_server():
    """A server whose queue takes nothing (--max-queued 0), with its metrics. Started as the
    module begins, so its loading overlaps the tests before its user's."""
    metrics = free_port()
    with ServerProcess("--max-queued", "0", "--metrics-port", str(metrics), wait=False) as server:
        server.metrics_port = metrics
        yield server


def test_resource_exhausted_is_retried_with_backoff_within_timeout(refusing_server, capsys):
    """A server whose queue takes nothing (--max-queued 0) refuses every answer; the server's
    own metrics count the attempts."""
    server, metrics = refusing_server.wait_ready(), refusing_server.metrics_port
    common = ["--server", server.address, "--image", str(IMAGE), "--question", QUESTION,
              "--mode", "image"]
    assert main([*common, "--no-wait"]) == 1
    assert "edge-agent: RESOURCE_EXHAUSTED" in capsys.readouterr().err
    assert refused(metrics) == 1
    assert main([*common, "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert f"waiting for {server.address} (RESOURCE_EXHAUSTED" in err
    assert "within --timeout 2 s" in err
    # Backoff 0.1 s doubling, full jitter: at least 5 attempts fit in 2 s, not hundreds.
    assert 5 <= refused(metrics) - 1 <= 40
