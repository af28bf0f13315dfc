"""Starting a real ``cloud-server`` process and waiting until it serves: shared by the demo,
the benchmarks and the integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class ServerProcess:
    def __init__(self, *flags: str, env: dict | None = None, ready_timeout: float = 180.0,
                 wrap: tuple[str, ...] = (), wait: bool = True):
        # ``wrap`` prefixes the command, e.g. ("ip", "netns", "exec", NS) for the benchmarks'
        # emulated links, which run the server inside a network namespace. ``wait=False``
        # returns once the process is started; ``wait_listening`` or ``wait_ready`` then waits.
        exe = Path(sys.executable).parent / "cloud-server"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cloud_server.server"]
        self.proc = subprocess.Popen([*wrap, *cmd, "--port", "0", *flags], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._listening = threading.Event()
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.address: str | None = None
        if wait:
            self.wait_listening(ready_timeout)

    def wait_listening(self, timeout: float = 180.0) -> "ServerProcess":
        """Until the server has bound its port and printed it (the model may still be loading).
        A process that exits first fails at once, not at the deadline."""
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("cloud-server did not start listening:\n" + self.log())
        self.address = re.search(r"listening on (\S+)", self.lines[0]).group(1)
        return self

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening on" in line:
                self._listening.set()
            if line.startswith("cloud-server ready"):
                self._ready.set()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def wait_ready(self, timeout: float = 180.0) -> "ServerProcess":
        if self.address is None:
            self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("cloud-server did not become ready:\n" + self.log())
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return "".join(self.lines) + "".join(self.stderr_lines)

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.terminate()
