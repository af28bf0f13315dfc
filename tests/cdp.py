"""Headless Chromium driven over the DevTools protocol, for tests/test_web_edge.py: the browser
is started with ``--remote-debugging-port=0`` (it prints the address it chose), and its first
page is driven over a websocket (aiohttp's client): navigate, evaluate JavaScript (awaiting
promises), take screenshots. Small on purpose: only what the tests use."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time

import aiohttp


def chromium_binary() -> str | None:
    """Debian's ``chromium`` (``make chromium`` installs it), or another Chromium on PATH."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class JavaScriptError(AssertionError):
    pass


class Browser:
    """``async with Browser() as page:``: one headless Chromium and its first tab."""

    def __init__(self, binary: str, width: int = 720, height: int = 900):
        self.binary, self.size = binary, (width, height)
        self.proc: subprocess.Popen | None = None
        self.profile = tempfile.TemporaryDirectory(prefix="alignedvq-chromium-")
        self.session: aiohttp.ClientSession | None = None
        self.ws = None
        self.ids = itertools.count(1)
        self.console: list[str] = []

    async def __aenter__(self) -> "Browser":
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        self.proc = subprocess.Popen(
            [self.binary, "--headless=new", "--remote-debugging-port=0", "--no-sandbox",
             "--no-first-run", "--no-default-browser-check", "--disable-gpu",
             "--disable-extensions", "--disable-background-networking", "--mute-audio",
             f"--user-data-dir={self.profile.name}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        endpoint = await asyncio.get_running_loop().run_in_executor(None, self._endpoint)
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://{endpoint}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        return self

    def _endpoint(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if match:
                # Keep draining stderr, or a chatty browser blocks on a full pipe.
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return match.group(1)
        raise RuntimeError("chromium did not start its DevTools endpoint:\n" + "".join(lines))

    async def __aexit__(self, *exc) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.profile.cleanup()

    async def send(self, method: str, **params) -> dict:
        """One DevTools command; events that arrive meanwhile are kept only as console text."""
        ident = next(self.ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self.ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"the DevTools connection closed ({message.type})")
            data = json.loads(message.data)
            if data.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                             for a in data["params"]["args"]))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append(data["params"]["exceptionDetails"].get("text", "") + " "
                                    + str(data["params"]["exceptionDetails"].get("exception", {})
                                          .get("description", "")))
            if data.get("id") == ident:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]

    async def evaluate(self, expression: str):
        """The expression's value (a promise is awaited), as JSON."""
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise JavaScriptError(details.get("exception", {}).get("description")
                                  or details.get("text"))
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout: float = 20.0):
        """Polls until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except JavaScriptError:
                value = None  # the page is still loading: its globals are not there yet
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still false after {timeout} s; console: "
                                   f"{self.console[-10:]}")
            await asyncio.sleep(0.05)

    async def screenshot(self) -> bytes:
        result = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])
