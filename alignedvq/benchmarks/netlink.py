"""Emulated links between the edge and the cloud for the latency benchmark.

``NetnsLink`` (needs root): two network namespaces, each with its own TCP/IP stack, joined by a
point-to-point link made of two TUN devices and a forwarder thread in this process, the way
mahimahi's ``mm-delay`` / ``mm-link`` work. The forwarder reads every IP packet (SYN, data, ACK
alike) from one end and writes it to the other after serialising it at the link rate (FIFO per
direction, drop-tail beyond 1 s of queue) plus the one-way delay, so TCP sees the real
round-trip time and every byte pays for the bottleneck.

Why not the kernel: it has no ``netem`` here (docs/design.md), and ``tc tbf``, tried first,
needs a bucket of at least one MTU, so an idle link lets a payload's first 1,500 B through
unserialised. At 1 Mbit/s that is 12 ms free, which flattered the larger upload: the first full
run measured a 1,987-B JPEG crossing in ~5 ms instead of 16.

``ProxyLink`` (no privileges): the documented fallback, a TCP relay on 127.0.0.1 that holds every
chunk of bytes for the one-way delay and paces it at the link rate in each direction. It only
shapes the byte stream (TCP's own ACKs and handshake cross loopback undelayed), so it is the
weaker emulation; the report says which one ran.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import select
import struct
import subprocess
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
EDGE_ADDR, CLOUD_ADDR = "10.77.0.1", "10.77.0.2"
MTU = 1500


class LinkError(RuntimeError):
    pass


def _sh(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise LinkError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")


def _tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class NetnsLink:
    kind = "netns"

    def __init__(self, one_way_delay_ms: float = 10.0):
        tag = f"{os.getpid() % 100000}"
        self.edge_ns, self.cloud_ns = f"avqb-edge-{tag}", f"avqb-cloud-{tag}"
        self.devs = (f"avqe{tag}", f"avqc{tag}")
        self.delay = one_way_delay_ms / 1000
        self.rate_mbit: float | None = None
        self._fds: list[int] = []
        self._stop_r = self._stop_w = None
        self._thread = None
        self.forwarded = 0

    # -- the namespaces ---------------------------------------------------------------------
    def __enter__(self) -> "NetnsLink":
        try:
            _sh("ip", "netns", "add", self.edge_ns)
            _sh("ip", "netns", "add", self.cloud_ns)
            for dev, ns, mine, peer in ((self.devs[0], self.edge_ns, EDGE_ADDR, CLOUD_ADDR),
                                        (self.devs[1], self.cloud_ns, CLOUD_ADDR, EDGE_ADDR)):
                # The TUN device is created here and moved: this process keeps its fd.
                self._fds.append(_tun(dev))
                _sh("ip", "link", "set", dev, "netns", ns)
                _sh("ip", "-n", ns, "addr", "add", mine, "peer", peer, "dev", dev)
                _sh("ip", "-n", ns, "link", "set", dev, "mtu", str(MTU), "up")
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
            self._stop_r, self._stop_w = os.pipe()
            self._thread = threading.Thread(target=self._forward, name="link-delay", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(5)
            self._thread = None
        for fd in self._fds + [self._stop_r, self._stop_w]:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fds, self._stop_r, self._stop_w = [], None, None
        for ns in (self.edge_ns, self.cloud_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def set_rate(self, mbit: float) -> None:
        self.rate_mbit = mbit   # read by the forwarder thread for the next packet

    def set_delay(self, one_way_delay_ms: float) -> None:
        """The one-way delay of packets read from now on (the round trip is twice it). Each
        direction's queue is FIFO and released from its head, so a shorter delay never lets a
        later packet overtake one still queued."""
        self.delay = one_way_delay_ms / 1000

    def qdiscs(self) -> list[str]:
        out = []
        for dev, ns in zip(self.devs, (self.edge_ns, self.cloud_ns)):
            out.append(subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev",
                                       dev], capture_output=True, text=True).stdout.strip())
        return out

    # -- who runs where ---------------------------------------------------------------------
    def server_wrap(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.cloud_ns)

    def client_wrap(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.edge_ns)

    server_host = CLOUD_ADDR

    def target(self, server_address: str) -> str:
        return server_address  # the server binds CLOUD_ADDR; the edge reaches it over the link

    def describe(self) -> str:
        return (f"two network namespaces ({self.edge_ns}: edge {EDGE_ADDR}, {self.cloud_ns}: "
                f"cloud {CLOUD_ADDR}) joined by a TUN point-to-point link; a user-space "
                f"forwarder serialises every IP packet at the link rate and delays it "
                f"{self.delay * 1000:.0f} ms each way (the kernel has no netem, and tc tbf's "
                f"one-MTU bucket let the first 1,500 B of a payload through unserialised)")

    # -- the delay line ---------------------------------------------------------------------
    def _forward(self) -> None:
        a, b = self._fds
        queues = {a: collections.deque(), b: collections.deque()}   # keyed by destination fd
        busy_until = {a: 0.0, b: 0.0}    # when each direction's link finishes its last packet
        peer = {a: b, b: a}
        while True:
            now = time.monotonic()
            heads = [q[0][0] for q in queues.values() if q]
            timeout = max(0.0, min(heads) - now) if heads else None
            readable, _, _ = select.select([a, b, self._stop_r], [], [], timeout)
            if self._stop_r in readable:
                return
            now = time.monotonic()
            for fd in readable:
                while True:
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        return
                    dst = peer[fd]
                    start = max(now, busy_until[dst])
                    if start - now > 1.0:
                        continue          # drop-tail: more than 1 s queued on this direction
                    busy_until[dst] = start + len(packet) * 8 / ((self.rate_mbit or 1e4) * 1e6)
                    queues[dst].append((busy_until[dst] + self.delay, packet))
            now = time.monotonic()
            for dst, q in queues.items():
                while q and q[0][0] <= now:
                    try:
                        os.write(dst, q.popleft()[1])
                        self.forwarded += 1
                    except OSError:
                        pass  # the receiving side is full or going away: the packet is lost


class ProxyLink:
    """A shaping TCP relay on loopback (see the module docstring for what it does not model)."""

    kind = "proxy"
    server_host = "127.0.0.1"

    def __init__(self, one_way_delay_ms: float = 10.0):
        self.delay = one_way_delay_ms / 1000
        self.rate_mbit: float | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = None
        self._server = None
        self._upstream = None

    def __enter__(self) -> "ProxyLink":
        ready = threading.Event()

        def serve():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._relay, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="link-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise LinkError("the shaping proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = None

    def set_rate(self, mbit: float) -> None:
        self.rate_mbit = mbit

    def set_delay(self, one_way_delay_ms: float) -> None:
        """The one-way delay of chunks read from now on (``_pipe`` keeps their order)."""
        self.delay = one_way_delay_ms / 1000

    def qdiscs(self) -> list[str]:
        return []

    def server_wrap(self) -> tuple[str, ...]:
        return ()

    def client_wrap(self) -> tuple[str, ...]:
        return ()

    def target(self, server_address: str) -> str:
        self._upstream = server_address.rsplit(":", 1)
        return f"127.0.0.1:{self.port}"

    def describe(self) -> str:
        return (f"loopback shaping proxy on 127.0.0.1:{self.port}: every chunk of bytes is held "
                f"{self.delay * 1000:.0f} ms and paced at the link rate in each direction "
                f"(network namespaces were not available)")

    async def _relay(self, reader, writer) -> None:
        host, port = self._upstream
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader, writer) -> None:
        """One direction: a chunk leaves when the link has serialised it, arrives ``delay``
        later; chunks keep their order because departure times never decrease."""
        loop = asyncio.get_running_loop()
        busy_until = arrives = 0.0
        try:
            while data := await reader.read(65536):
                start = max(loop.time(), busy_until)
                busy_until = start + len(data) * 8 / (self.rate_mbit * 1e6)
                # Never before the previous chunk: set_delay may have shortened the delay
                # while chunks were still in flight.
                arrives = max(busy_until + self.delay, arrives)
                loop.call_at(arrives, _deliver, writer, data)
            loop.call_at(max(max(loop.time(), busy_until) + self.delay, arrives), _deliver,
                         writer, None)
        except (ConnectionError, OSError):
            writer.close()


def _deliver(writer, data: bytes | None) -> None:
    """Writes (or, for None, half-closes) unless the other side has gone meanwhile."""
    if writer.is_closing():
        return
    try:
        if data is None:
            if writer.can_write_eof():
                writer.write_eof()
        else:
            writer.write(data)
    except (ConnectionError, OSError, RuntimeError):
        writer.close()


def open_link(prefer: str = "auto", one_way_delay_ms: float = 10.0):
    """The namespace link when this process may create namespaces, else the proxy. Returns
    ``(link, why)`` where ``why`` explains a fallback."""
    if prefer in ("auto", "netns"):
        try:
            return NetnsLink(one_way_delay_ms).__enter__(), None
        except (LinkError, OSError) as e:
            if prefer == "netns":
                raise
            why = f"network namespaces unavailable ({e}); fell back to the loopback proxy"
    else:
        why = "the loopback proxy was requested"
    return ProxyLink(one_way_delay_ms).__enter__(), why
