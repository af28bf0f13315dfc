"""Waiting for a server that is still starting, and retrying what the server says to retry.

A call is retried when it ends with ``UNAVAILABLE`` (nothing listens yet, the model is still
loading, the server is draining) or ``RESOURCE_EXHAUSTED`` (its queue is full: "retry with
backoff"), with exponential backoff and full jitter, until the call's own deadline
(``--timeout``). A call that has already streamed part of its answer is never retried.

Why a loop here and not only gRPC's ``retryPolicy`` in the service config: our server sends its
initial metadata (the request id) before it checks readiness or the queue, and gRPC commits a
call, and stops retrying it, once response headers have arrived; gRPC also caps a policy at 5
attempts, which does not span a model that takes a minute to load.

Nothing listening and a listener that refuses the connection both reach the client as
``UNAVAILABLE``, with no structured reason. They are told apart by what can be observed: whether
the channel ever became READY, and whether a TCP listener accepts at the target's address. A
listener that accepts TCP while the channel cannot get READY is a TLS/plaintext mismatch or a
certificate the other side refused, which waiting cannot fix: the call fails at once
(:class:`ConnectionRefusedByServer`) instead of waiting out ``--timeout``.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Callable, TypeVar

import grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
INITIAL_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
# How long a channel may fail to get READY while a TCP listener accepts, before the listener
# is taken to refuse us (TLS handshakes on loopback take milliseconds; a busy server's accept
# queue still completes the TCP connection).
HANDSHAKE_GRACE_S = 2.0

T = TypeVar("T")


class ConnectionRefusedByServer(Exception):
    """A server listens at the target but the channel cannot connect to it."""

    def __init__(self, error: grpc.RpcError):
        super().__init__(f"{error.code().name}: {error.details()}")
        self.error = error


def first_address(target: str) -> tuple[int, object] | None:
    """(address family, address) of the first address of a gRPC target, for a TCP (or Unix
    socket) probe; None for schemes that name no fixed address."""
    if target.startswith("unix:"):
        return socket.AF_UNIX, target[len("unix:"):].removeprefix("//")
    for scheme in ("ipv4:", "ipv6:", "dns:///", "dns:"):
        if target.startswith(scheme):
            target = target[len(scheme):].split(",")[0]
            break
    else:
        if ":/" in target.split(",")[0]:
            return None  # another resolver scheme (xds:///, ...)
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return socket.AF_UNSPEC, (host.strip("[]") or "localhost", int(port))


def listener_accepts(target: str, timeout: float = 1.0) -> bool:
    address = first_address(target)
    if address is None:
        return False
    family, addr = address
    try:
        if family == socket.AF_UNIX:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout)
                s.connect(addr)
        else:
            socket.create_connection(addr, timeout=timeout).close()
        return True
    except OSError:
        return False


def channel_ready(channel: grpc.Channel, timeout: float) -> bool:
    future = grpc.channel_ready_future(channel)
    try:
        future.result(timeout=max(0.0, timeout))
        return True
    except grpc.FutureTimeoutError:
        future.cancel()  # unsubscribes from the channel's state changes
        return False


class Retrying:
    """Runs calls against one channel with waiting and retries, each within ``timeout``
    seconds; ``wait=False`` is fail-fast (one attempt, gRPC's default)."""

    def __init__(self, channel: grpc.Channel, target: str, timeout: float, wait: bool = True,
                 on_wait: Callable[[grpc.RpcError], None] = lambda error: None):
        """``on_wait`` is told, once, the first time a call waits or retries."""
        self.channel, self.target, self.timeout, self.wait = channel, target, timeout, wait
        self._on_wait, self._told = on_wait, False

    def __call__(self, invoke: Callable[[float], T]) -> T:
        """``invoke(seconds_left)`` makes one attempt with that deadline."""
        deadline = time.monotonic() + self.timeout
        backoff = INITIAL_BACKOFF_S
        while True:
            try:
                return invoke(max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as error:
                if not self.wait or error.code() not in RETRYABLE:
                    raise
                last = error
            left = deadline - time.monotonic()
            if left <= 0:
                raise last
            if not self._told:
                self._told = True
                self._on_wait(last)
            if last.code() == grpc.StatusCode.UNAVAILABLE and not channel_ready(self.channel,
                                                                                0.05):
                self._wait_for_channel(last, deadline)
            # Also after the channel got READY: a server that listens while its model loads
            # answers UNAVAILABLE at once, and must not be asked in a tight loop.
            time.sleep(max(0.0, min(deadline - time.monotonic(),
                                     random.uniform(0, backoff))))  # full jitter
            if time.monotonic() >= deadline:
                raise last  # the reason it kept retrying, not an attempt with no time left
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _wait_for_channel(self, last: grpc.RpcError, deadline: float) -> None:
        """Wait (bounded by ``deadline``) for the channel to connect; fail at once when a
        listener is there but will not let us connect."""
        refused_since = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise last
            if channel_ready(self.channel, min(left, 0.5)):
                return
            if listener_accepts(self.target):
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since >= HANDSHAKE_GRACE_S:
                    raise ConnectionRefusedByServer(last)
            else:
                refused_since = None
