"""The console scripts end with ``common._runtime.fast_exit.exit_now`` instead of Python's interpreter
teardown: nothing written may be lost on the way out, and the exit status must be main's."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # the point is what a real process leaves behind

PROGRAM = """
import logging, sys
from common._runtime.fast_exit import exit_now
logging.basicConfig(stream=sys.stderr, format="%(message)s", level=logging.INFO)
sys.stdout.write("x" * 200_000)          # a long answer: it must arrive whole
logging.getLogger("t").info("last log line")
print("last stderr line", file=sys.stderr, end="")  # no newline: still in the buffer
exit_now(int(sys.argv[1]))
"""


@pytest.mark.parametrize("code", [0, 3])
def test_everything_written_arrives_and_the_status_is_mains(code):
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(code)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == code
    assert done.stdout == "x" * 200_000
    assert done.stderr == "last log line\nlast stderr line"


def test_the_two_service_commands_end_through_it():
    import tomllib
    from pathlib import Path

    from cloud_server import server
    from edge_agent import cli

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())[
        "project"]["scripts"]
    assert scripts["edge-agent"] == "edge_agent.cli:console_main"
    assert scripts["cloud-server"] == "cloud_server.server:console_main"
    for module in (server, cli):
        assert "exit_now" in module.console_main.__code__.co_names, module.__name__
