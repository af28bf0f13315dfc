"""Prometheus metrics of the cloud server (``--metrics-port``), in their own registry so a test
or an embedding program can run several servers in one process.

What a fleet operator watches: how many requests by mode and outcome, how many bytes they
carried and how much smaller than fp16 features that is, how deep the queue is, how long
requests take (whole and to the first token), how many tokens the model produces and why its
answers end, and how the images kept for follow-up questions fare (hits, misses, evictions,
bytes held).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Payloads run from ~100 B (12-bit indices, tiny model) to MBs (fp16 features at 7B scale).
BYTES_BUCKETS = (64, 128, 256, 512, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
RATIO_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("alignedvq_requests", "Requests by method, mode and gRPC status",
                                ["method", "mode", "code"], registry=r)
        self.payload_bytes = Histogram("alignedvq_payload_bytes",
                                       "Serialized request bytes received", ["mode"],
                                       buckets=BYTES_BUCKETS, registry=r)
        self.compression_ratio = Histogram(
            "alignedvq_compression_ratio",
            "fp16 feature bytes of the same tokens divided by the bytes received", ["mode"],
            buckets=RATIO_BUCKETS, registry=r)
        self.queue_depth = Gauge("alignedvq_queue_depth", "Requests waiting for a batch slot",
                                 registry=r)
        self.batch_size = Gauge("alignedvq_batch_size", "Requests in the running batch",
                                registry=r)
        self.latency = Histogram("alignedvq_request_seconds",
                                 "Server time from request start to the last response",
                                 ["mode"], buckets=SECONDS_BUCKETS, registry=r)
        self.ttft = Histogram("alignedvq_time_to_first_token_seconds",
                              "Server time from request start to the first text delta", ["mode"],
                              buckets=SECONDS_BUCKETS, registry=r)
        self.tokens = Counter("alignedvq_generated_tokens",
                              "Generated tokens (rate() of it is tokens per second)", registry=r)
        self.tokens_per_second = Histogram(
            "alignedvq_request_tokens_per_second", "Each request's generated tokens per second "
            "of generation", buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000), registry=r)

        self.finish_reasons = Counter("alignedvq_finish_reasons", "Answers by why they ended: "
                                      "end, length, stop_string, or cancelled (stopped while "
                                      "generating)", ["reason"], registry=r)

    def watch_images(self, cache) -> None:
        """The image cache's own counts (cloud_server/image_cache.py), read when scraped."""
        self.registry.register(_ImageCacheCollector(cache))

    def watch(self, engine) -> None:
        """Queue depth and batch size are read from the engine's own statistics when scraped,
        never stale."""
        self.queue_depth.set_function(lambda: engine.stats().queue_depth)
        self.batch_size.set_function(lambda: engine.stats().running)

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns the bound port (``port`` 0 picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port


class _ImageCacheCollector:
    def __init__(self, cache):
        self.cache = cache

    def describe(self):
        return []  # registered without a description: collected only when scraped

    def collect(self):
        s = self.cache.stats()
        lookups = CounterMetricFamily("alignedvq_image_handle_lookups", "Follow-up requests' "
                                      "image handles looked up: hit, or miss (unknown, expired "
                                      "or another caller's)", labels=["result"])
        lookups.add_metric(["hit"], s.hits)
        lookups.add_metric(["miss"], s.misses)
        yield lookups
        evictions = CounterMetricFamily("alignedvq_image_cache_evictions", "Images dropped from "
                                        "the cache: lru (to make room) or expired (TTL)",
                                        labels=["reason"])
        evictions.add_metric(["lru"], s.evicted)
        evictions.add_metric(["expired"], s.expired)
        yield evictions
        yield GaugeMetricFamily("alignedvq_image_cache_bytes", "Bytes of image embeddings held "
                                "for follow-up questions", value=s.bytes)
        yield GaugeMetricFamily("alignedvq_image_cache_entries", "Images held for follow-up "
                                "questions", value=s.entries)
