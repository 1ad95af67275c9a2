"""Prometheus collectors on a per-app registry (no global state, so tests can run many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every collector Wharf exports on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("wharf_http_requests", "Requests served, by route and status",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("wharf_http_request_duration_seconds",
                                         "Time to response headers, by route", ["route"],
                                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10),
                                         registry=r)
        self.cache = Counter("wharf_cache_requests", "Cache outcomes by kind (manifest, blob, tag) "
                             "and result (hit, miss, stale, coalesced, revalidated)",
                             ["kind", "result"], registry=r)
        self.bytes_served = Counter("wharf_bytes_served", "Bytes sent to clients, by source (cache, upstream)",
                                    ["source"], registry=r)
        self.upstream_requests = Counter("wharf_upstream_requests", "Requests made upstream",
                                         ["upstream", "method", "status"], registry=r)
        self.upstream_bytes = Counter("wharf_upstream_bytes", "Bytes received from upstream",
                                      ["upstream"], registry=r)
        self.ratelimit_remaining = Gauge("wharf_upstream_ratelimit_remaining",
                                         "Pulls left in upstream's window (ratelimit-remaining)",
                                         ["upstream"], registry=r)
        self.ratelimit_limit = Gauge("wharf_upstream_ratelimit_limit",
                                     "Pulls allowed in upstream's window (ratelimit-limit)",
                                     ["upstream"], registry=r)
        self.fills_in_flight = Gauge("wharf_fills_in_flight", "Upstream downloads in progress",
                                     registry=r)
        self.store_bytes = Gauge("wharf_store_bytes", "Bytes stored, by kind (cached, pushed)",
                                 ["kind"], registry=r)
        self.store_budget = Gauge("wharf_store_budget_bytes", "Size budget for cached content",
                                  registry=r)
        self.evictions = Counter("wharf_evictions", "Blobs evicted under the size budget", registry=r)
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self._cache_children: dict[tuple[str, str], object] = {}
        self.evicted_bytes = Counter("wharf_evicted_bytes", "Bytes evicted under the size budget",
                                     registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count a request and its duration; labelled children are looked up once, then kept."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.request_seconds.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_cache(self, kind: str, result: str) -> None:
        """Count a cache outcome; the labelled child is looked up once, then kept."""
        child = self._cache_children.get((kind, result))
        if child is None:
            child = self._cache_children[(kind, result)] = self.cache.labels(kind, result)
        child.inc()
