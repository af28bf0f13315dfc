import concurrent.futures
import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.paths import DEFAULT_MODEL_DIR

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

KINDS = ("unit", "integration")
# `make test-fast` sets this: property tests then draw at most FAST_EXAMPLES cases each, so the
# edit loop stays under a minute; `make test` draws each test's full number.
FAST = os.environ.get("ALIGNEDVQ_TEST_FAST") == "1"
FAST_EXAMPLES = 100


def examples(full: int) -> int:
    """Hypothesis ``max_examples`` for a property test whose full run draws ``full``."""
    return min(full, FAST_EXAMPLES) if FAST else full


def cli(name: str) -> list[str]:
    """The installed console script, as a user runs it (next to this interpreter)."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if not found:
        pytest.fail(f"console script {name!r} not installed; run `make install`")
    return [found]


# --- markers: every test is exactly one of unit / integration ------------------------------

@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection sees the items
def pytest_collection_modifyitems(config, items):
    """Tests that start a real process or server carry ``integration`` (module ``pytestmark``
    or a decorator); every other test is ``unit``, so ``-m unit`` (``make test-fast``) is the
    edit loop's suite. Tests that stop a shared server go last (``STOPS_ITS_SERVER``)."""
    for item in items:
        kinds = {m.name for m in item.iter_markers() if m.name in KINDS}
        if len(kinds) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked both unit and integration")
        if not kinds:
            item.add_marker(pytest.mark.unit)
    # A stable sort: everything else keeps its collected order.
    items.sort(key=lambda item: STOPS_ITS_SERVER in getattr(item, "fixturenames", ()))


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch):
    """Keeps the ``unit`` marker true: a unit test that starts a process fails, naming the
    marker it needs, instead of silently slowing down the fast target."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(self, args, *rest, **kw):
        raise AssertionError(f"a unit test started a process ({args!r}): mark the test "
                             "@pytest.mark.integration, or keep it in-process")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


# --- shared expensive things ---------------------------------------------------------------

@pytest.fixture(scope="session")
def embedded_model():
    from alignedvq.evaluation.original_model import load_llava

    return load_llava(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="session")
def exported_edge(tmp_path_factory) -> Path:
    """The embedded model's edge exported to ONNX once per session, by the command a user runs
    (`alignedvq export-edge`); its output is kept in export.log."""
    import subprocess

    out = tmp_path_factory.mktemp("edge-onnx")
    r = subprocess.run(cli("alignedvq") + ["export-edge", "--out", str(out)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (out / "export.log").write_text(r.stdout)
    return out


@dataclass
class WebServer:
    """A cloud-server with its web port: ``url`` the page, ``token`` the one it accepts,
    ``cors_origin`` the other origin it lets call (``--web-cors-origins``)."""

    process: object
    url: str
    token: str
    token_file: Path
    edge: Path
    cors_origin: str = "http://allowed.example"

    @property
    def address(self) -> str:  # the native gRPC port
        return self.process.address


@pytest.fixture(scope="session")
def web_server(exported_edge, tmp_path_factory):
    """One server for the web port's tests (test_web_port, test_web_edge): the session's
    exported edge served to the page, a bearer token required (so the page's refusal and its
    token are both exercised on it), CORS for one other origin, metrics on."""
    import re
    import time

    from alignedvq.server_process import ServerProcess

    folder = tmp_path_factory.mktemp("web-server")
    token = "web-edge-test-token"
    token_file = folder / "tokens"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    server = ServerProcess("--web-port", "0", "--web-edge", str(exported_edge),
                           "--auth-token-file", str(token_file), "--metrics-port", "0",
                           "--web-cors-origins", WebServer.cors_origin)
    try:
        server.wait_ready(300)
        deadline = time.monotonic() + 30
        while not any("web on" in line for line in server.lines):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        url = next(re.search(r"web on (\S+)", line).group(1) for line in server.lines
                   if "web on" in line)
        yield WebServer(server, url, token, token_file, exported_edge)
    finally:
        server.terminate()


@pytest.fixture(scope="session")
def default_server():
    """One real ``cloud-server`` with default flags (embedded model, shipped codec), started
    once per test run (as soon as collection ends, when collected tests use it) and shared by
    every module that needs nothing else. Tests must leave it serving: ones that stop, drain or
    reconfigure a server start their own."""
    return DEFAULT_SERVER.get()


# One small server per engine serves the tests of every module that needs nothing else
# (test_malformed's corpus, test_engine_contract, test_vllm_engine): each start costs time, a vLLM
# one ~30 s. Their flags are the union of what those need: the corpus's limits, a capacity small
# enough for the admission tests to fill, and the metrics the cancellation test reads.
SMALL_FLAGS = ("--metrics-port", "0",
               "--max-question-chars", "200", "--max-new-tokens", "16",
               "--max-message-bytes", "65536", "--max-image-pixels", "1000000",
               "--max-batch-size", "4", "--max-queued", "4")
VLLM_FLAGS = ("--engine", "vllm", *SMALL_FLAGS)
BUILTIN_FLAGS = ("--engine", "builtin", *SMALL_FLAGS)


class SharedServer:
    """A server started on first use and started again if a test stopped it (the SIGTERM drain
    test stops it on purpose), so modules may share it in any order. ``start_early`` begins the
    first start on a thread, to overlap the tests that run before the first user."""

    def __init__(self, *flags: str, extra: str | None = None):
        # ``extra``: the optional package the server needs; without it, its users skip.
        self.flags, self.extra, self.server = flags, extra, None
        self._starting: concurrent.futures.Future | None = None
        self._early = None  # the process start_early spawned

    def _spawn(self):
        from alignedvq.server_process import ServerProcess

        return ServerProcess(*self.flags, wait=False)

    @staticmethod
    def _wait(server):
        try:
            return server.wait_ready(900)
        except BaseException:
            server.kill()
            raise

    def _start(self):
        return self._wait(self._spawn())

    def start_early(self) -> None:
        """Starts the process now, on this thread (a unit test running meanwhile may not start
        one), and waits for it to load on another."""
        if self._starting is None and self.server is None:
            self._early = self._spawn()
            self._starting = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="shared-server-start").submit(self._wait, self._early)

    def get(self):
        if self.extra:
            pytest.importorskip(self.extra, reason=f"the {self.extra} extra is not installed "
                                "(make test installs it)")
        if self._starting is not None:
            starting, self._starting = self._starting, None
            self.server = starting.result()  # what the start raised, the first user sees
        if self.server is None or self.server.proc.poll() is not None:
            self.close()
            self.server = self._start()
        return self.server

    def close(self) -> None:
        if self._starting is not None:  # started early, never used (perhaps still loading)
            starting, self._starting = self._starting, None
            self._early.terminate()
            with contextlib.suppress(Exception):
                starting.result()
        if self.server is not None:
            self.server.terminate()
            self.server = None


# The vLLM engine's start-up (~25 s: two more processes, each importing torch and vLLM) is the
# longest single wait of the suite. When the collected tests will use it, it begins on a thread
# as soon as collection ends and overlaps the tests that run before its first user.
SHARED_VLLM = SharedServer(*VLLM_FLAGS, extra="vllm")
SHARED_BUILTIN = SharedServer(*BUILTIN_FLAGS)
SMALL_SERVERS = {"builtin": SHARED_BUILTIN, "vllm": SHARED_VLLM}
# The default_server fixture's, started early too: its first user (test_hostile_images) comes
# after a minute of tests.
DEFAULT_SERVER = SharedServer()
NEEDS_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="the vllm extra is not installed (make test installs it)")
# Parameters of the tests that hold for each engine.
ENGINES = ["builtin", pytest.param("vllm", marks=NEEDS_VLLM)]
# Tests that stop their server (the SIGTERM drain) ask for it by this fixture, and run last:
# a shared server stopped earlier would be started again for its next user.
STOPS_ITS_SERVER = "small_server_to_stop"


def _small_servers_used(item) -> set[str]:
    names = getattr(item, "fixturenames", ())
    used = {"vllm"} if "shared_vllm" in names else set()
    params = getattr(getattr(item, "callspec", None), "params", {})
    return used | {params[f] for f in ("small_server", STOPS_ITS_SERVER) if f in params}


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    used = set().union(*(_small_servers_used(item) for item in session.items))
    if importlib.util.find_spec("vllm") is None:
        used.discard("vllm")
    for name in sorted(used, reverse=True):  # vLLM's, the longest, first
        SMALL_SERVERS[name].start_early()
    if any("default_server" in getattr(item, "fixturenames", ()) for item in session.items):
        DEFAULT_SERVER.start_early()


def pytest_sessionfinish(session):
    for server in (*SMALL_SERVERS.values(), DEFAULT_SERVER):
        server.close()  # also when it was started early and no test asked for it


@pytest.fixture(scope="session")
def shared_vllm():
    """The session's vLLM server: ``shared_vllm.get()`` waits for it (or skips without vLLM)."""
    yield SHARED_VLLM
    SHARED_VLLM.close()


@pytest.fixture(params=ENGINES)
def small_server(request):
    """The session's small server of each engine (SMALL_FLAGS), parametrised over the engines."""
    return SMALL_SERVERS[request.param].get()


@pytest.fixture(params=ENGINES)
def small_server_to_stop(request):
    """As ``small_server``, for a test that stops it: such tests run after all others."""
    return SMALL_SERVERS[request.param].get()


@dataclass
class Run:
    """What ``subprocess.run(..., capture_output=True, text=True)`` returns, for an in-process
    run of a console script's ``main``."""
    returncode: int
    stdout: str
    stderr: str


def run_in_process(main, argv: list[str]) -> Run:
    """Runs a console script's ``main(argv)`` in this interpreter, capturing what it prints.
    Spares the ~4 s of torch/transformers imports a subprocess pays; tests about the process
    itself (exit codes, streams) keep a real subprocess."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors
            code = e.code if isinstance(e.code, int) else 1
    return Run(code, out.getvalue(), err.getvalue())


def status_codes_of_a_burst(call, n: int, timeout: float = 120) -> list[str]:
    """Runs ``call()`` from ``n`` threads released together; returns each one's outcome: "OK", or
    the gRPC status code's name when its message names ``--max-queued`` (the admission tests),
    or the code and the whole message when it does not, so the caller's check on the codes
    fails. (An assert inside the threads would only be printed.)"""
    import threading

    import grpc

    codes, gate = [], threading.Barrier(n)

    def one():
        gate.wait()
        try:
            call()
            codes.append("OK")
        except grpc.RpcError as e:
            details = e.details() or ""
            codes.append(e.code().name if "--max-queued" in details
                         else f"{e.code().name}: {details}")

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    # A call still hanging would otherwise just be missing from the outcomes.
    assert len(codes) == n, f"{n - len(codes)} of {n} calls did not end within {timeout:g} s"
    return codes


def edge_agent_in_process(*argv) -> Run:
    """``edge-agent ARGV`` in this process (edge_agent.cli.main)."""
    from edge_agent.cli import main

    return run_in_process(main, list(argv))


# --- a shared evaluation ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def test_split(tmp_path_factory) -> Path:
    """A fresh 60-question ShapesVQA test split (seed 2), shared by the evaluation tests."""
    from alignedvq.data.shapes_vqa import write_dataset

    return write_dataset(tmp_path_factory.mktemp("test-split"), 60, seed=2, progress=False)


@pytest.fixture(scope="session")
def original_eval(test_split) -> dict:
    """``alignedvq eval --dataset SPLIT --json --batch-size 32`` (the original model), run once
    per session in this process: tests/test_eval.py checks it, tests/test_codec.py compares the
    codec's accuracy with it."""
    from alignedvq.cli import main

    out = run_in_process(main, ["eval", "--dataset", test_split, "--json", "--batch-size", "32"])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
