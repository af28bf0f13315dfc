"""What ``edge-agent --mode auto`` predicts, and how it learns: the latency of each path (upload
the image, or send codes at one of the server's split points) as

    edge compute + round trip + bytes / uplink throughput + the server's time,

each term learned from measurements: the edge's compute per path from running it (profiled on
first use), the link from probes and from every call's own timings, the server's time per path
from the answers' summaries. All are exponential moving averages, so a link that changes is
followed, and a prediction that misses by far marks the link for a fresh probe.

Pure arithmetic on recorded numbers (no I/O, no clock): tests/test_auto_mode.py checks the
choice on recorded profiles. :mod:`edge_agent.auto` does the measuring and keeps the state on
disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Weight of a new sample in each moving average: recent enough to follow a link that changes
# from minute to minute, smooth enough that one slow call does not flip the choice.
EMA_WEIGHT = 0.3
# A call whose network time misses the prediction by more than this factor (either way) and
# this many ms says the link is not what was measured: the next request probes it again. (The
# slack keeps a loopback's few-ms jitter from counting as a change.)
STALE_FACTOR = 2.0
STALE_SLACK_MS = 10.0
# Below this share of a call's network time the byte term cannot be told from jitter, so such a
# call (codes: ~100 B) teaches the round trip, and a larger one (an upload) the throughput.
BYTES_SHARE_FOR_THROUGHPUT = 0.5
# Paths predicted within this fraction of the fastest are a tie, and the tie goes to the fewest
# bytes: the difference is inside what the prediction can tell, the larger payload has the
# heavier tail on a loaded link (benchmarks/auto_latency.md: the upload's p95 / p50 was 1.30
# against the codes' 1.16 at 10 Mbit/s), and bytes on the wire are a cost of their own.
TIE_MARGIN = 0.03
# A link measured longer ago than this is probed again: the device may have moved, and a path
# that stopped being taken teaches nothing about the link (the throughput is learned from
# uploads only).
LINK_TTL_S = 300.0


def ema(old: float | None, new: float, weight: float = EMA_WEIGHT) -> float:
    return new if old is None else (1 - weight) * old + weight * new


@dataclass
class Link:
    """The uplink as last measured: round trip (ms) and throughput (bits per ms = kbit/s)."""

    rtt_ms: float | None = None
    kbit_per_s: float | None = None
    stale: bool = True  # nothing measured yet, or a call disagreed: probe before choosing
    probed_at: float = 0.0  # when it was last probed (seconds since the epoch)

    def known(self, now: float | None = None) -> bool:
        """Measured, not contradicted since and, when ``now`` is given, not older than
        LINK_TTL_S."""
        fresh = now is None or now - self.probed_at <= LINK_TTL_S
        return (self.rtt_ms is not None and self.kbit_per_s is not None and not self.stale
                and fresh)

    def network_ms(self, payload_bytes: int) -> float:
        return self.rtt_ms + self.bytes_ms(payload_bytes)

    def bytes_ms(self, payload_bytes: int) -> float:
        return payload_bytes * 8 / self.kbit_per_s

    def probed(self, empty_ms: float, padded_ms: float, padded_bytes: int,
               now: float = 0.0) -> None:
        """Two probes: an empty one (the round trip) and one of ``padded_bytes``."""
        self.rtt_ms, self.probed_at = empty_ms, now
        # A link faster than the timer can tell is "fast": 10 Gbit/s, where bytes cost nothing.
        extra = max(padded_ms - empty_ms, padded_bytes * 8 / 1e7)
        self.kbit_per_s = padded_bytes * 8 / extra
        self.stale = False

    def observed(self, payload_bytes: int, network_ms: float) -> None:
        """One call's network time (its total less the edge's and the server's time)."""
        if self.rtt_ms is None or self.kbit_per_s is None:
            return
        predicted = self.network_ms(payload_bytes)
        low = predicted / STALE_FACTOR - STALE_SLACK_MS
        if not low <= network_ms <= predicted * STALE_FACTOR + STALE_SLACK_MS:
            self.stale = True
        if self.bytes_ms(payload_bytes) < BYTES_SHARE_FOR_THROUGHPUT * predicted:
            self.rtt_ms = ema(self.rtt_ms, max(network_ms - self.bytes_ms(payload_bytes), 0.0))
        else:
            byte_ms = max(network_ms - self.rtt_ms, payload_bytes * 8 / 1e7)
            self.kbit_per_s = ema(self.kbit_per_s, payload_bytes * 8 / byte_ms)


@dataclass(frozen=True)
class Path:
    """One way to ask: ``split_layer`` None is the image upload."""

    split_layer: int | None

    @property
    def name(self) -> str:
        return "image" if self.split_layer is None else f"codes@{self.split_layer}"

    @classmethod
    def parse(cls, name: str) -> "Path":
        return cls(None if name == "image" else int(name.split("@", 1)[1]))


@dataclass(frozen=True)
class Prediction:
    path: Path
    payload_bytes: int
    edge_ms: float
    network_ms: float
    server_ms: float

    @property
    def total_ms(self) -> float:
        return self.edge_ms + self.network_ms + self.server_ms

    def as_json(self) -> dict:
        return {"path": self.path.name, "payload_bytes": self.payload_bytes,
                **{k: round(getattr(self, k), 2)
                   for k in ("edge_ms", "network_ms", "server_ms", "total_ms")}}


@dataclass
class LatencyModel:
    """What is known about one edge (``edge_ms``: per path, for this model and runtime) and one
    server (``server_ms`` per path, and the link to it)."""

    link: Link = field(default_factory=Link)
    edge_ms: dict[str, float] = field(default_factory=dict)
    server_ms: dict[str, float] = field(default_factory=dict)

    def unprofiled(self, paths: list[Path]) -> list[Path]:
        """Paths whose edge compute has never been measured: run each once before choosing."""
        return [p for p in paths if p.name not in self.edge_ms]

    def predict(self, path: Path, payload_bytes: int) -> Prediction:
        # A path the server has not answered yet: its time is the others' (generation, the
        # same at every cut, dominates it), 0 before any answer.
        known = list(self.server_ms.values())
        server = self.server_ms.get(path.name, sum(known) / len(known) if known else 0.0)
        return Prediction(path, payload_bytes, self.edge_ms[path.name],
                          self.link.network_ms(payload_bytes), server)

    def choose(self, payloads: dict[Path, int]) -> tuple[Prediction, list[Prediction]]:
        """The path of lowest predicted latency (of those within TIE_MARGIN of it, the one of
        fewest bytes), and every prediction (fastest first), from each path's payload size.
        Needs the link measured and every path profiled."""
        predictions = sorted((self.predict(p, b) for p, b in payloads.items()),
                             key=lambda pr: (pr.total_ms, pr.path.name))
        tied = [p for p in predictions
                if p.total_ms <= predictions[0].total_ms * (1 + TIE_MARGIN)]
        return min(tied, key=lambda p: (p.payload_bytes, p.total_ms)), predictions

    def observe_edge(self, path: Path, edge_ms: float) -> None:
        self.edge_ms[path.name] = ema(self.edge_ms.get(path.name), edge_ms)

    def observe_call(self, path: Path, payload_bytes: int, edge_ms: float, server_ms: float,
                     total_ms: float, edge_warm: bool = True) -> None:
        """One answered call: teaches the edge's, the server's and the link's terms.
        ``edge_warm``: whether the encoder had run before in this process (a first run pays
        one-time start-up costs, not the path's compute, so it does not count)."""
        if edge_warm:
            self.observe_edge(path, edge_ms)
        self.server_ms[path.name] = ema(self.server_ms.get(path.name), server_ms)
        self.link.observed(payload_bytes, max(total_ms - edge_ms - server_ms, 0.0))

    # -- kept on disk between runs (edge_agent/auto.py) -------------------------------------
    def to_json(self) -> dict:
        return {"link": asdict(self.link), "edge_ms": self.edge_ms, "server_ms": self.server_ms}

    @classmethod
    def from_json(cls, data: dict) -> "LatencyModel":
        return cls(Link(**data.get("link", {})), dict(data.get("edge_ms", {})),
                   dict(data.get("server_ms", {})))
