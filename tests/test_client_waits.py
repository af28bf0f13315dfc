"""edge-agent and a server that is not up yet: it waits (default) or fails fast (--no-wait)."""

import json
import socket
import subprocess

from cloud_server.launch import ServerProcess
from common.paths import SAMPLES_DIR
from conftest import cli
from edge_agent.cli import main

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
                                                 "--timeout", "240"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The agent says when it starts waiting: only then is the server started (on the port
        # it is waiting for; the later --port wins over ServerProcess's own --port 0).
        waiting = edge.stderr.readline()
        assert waiting.startswith(f"edge-agent: waiting for 127.0.0.1:{port} (UNAVAILABLE"), \
            waiting
        with ServerProcess("--port", str(port)):
            out, err = edge.communicate(timeout=300)
        assert edge.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["answer"] == ANSWER
    finally:
        edge.kill()


def test_no_wait_fails_fast_and_waiting_is_bounded_by_timeout(capsys):
    port = free_port()
    common = ["--server", f"127.0.0.1:{port}", "--image", str(IMAGE), "--question", QUESTION,
              "--mode", "image"]
    assert main([*common, "--no-wait"]) == 1
    err = capsys.readouterr().err
    assert "edge-agent: UNAVAILABLE" in err and "waiting" not in err
    assert main([*common, "--timeout", "1.5"]) == 1
    err = capsys.readouterr().err
    assert "waiting for" in err and "within --timeout 1.5 s" in err
