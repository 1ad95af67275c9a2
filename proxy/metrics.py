"""Prometheus collectors on a per-app registry (no global state, so tests can run many apps).

With several worker processes, each publishes its samples to a file in the store every second,
and a scrape of any worker answers with every live worker's samples merged (``MetricsExchange``):
counters and histograms summed, gauges summed or maxed as they mean.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric


class Metrics:
    """Every collector Wharf exports on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("wharf_http_requests", "Requests served, by route and status (499: the client "
                                "closed the connection mid-answer; an answer a failed download aborted: "
                                "the upstream failure's status, 502 for content not matching its digest)",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("wharf_http_request_duration_seconds",
                                         "Time to answer, by route (blob bodies included)", ["route"],
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
        # replicas on disks of their own stream blobs from the replica that fills them (peer_flight.py)
        self.peer_bytes_sent = Counter("wharf_peer_bytes_sent", "Blob bytes sent to other replicas", registry=r)
        self.peer_bytes_received = Counter("wharf_peer_bytes_received", "Blob bytes received from other replicas",
                                           registry=r)
        self.ratelimit_remaining = Gauge("wharf_upstream_ratelimit_remaining",
                                         "Pulls left in upstream's window (ratelimit-remaining)",
                                         ["upstream"], registry=r)
        self.ratelimit_limit = Gauge("wharf_upstream_ratelimit_limit",
                                     "Pulls allowed in upstream's window (ratelimit-limit)",
                                     ["upstream"], registry=r)
        self.upstream_circuit = Gauge("wharf_upstream_circuit_state",
                                      "Circuit breaker per upstream: 0 closed, 1 half-open (one probe "
                                      "goes through), 2 open (requests fail at once)",
                                      ["upstream"], registry=r)
        self.upstream_circuit_opened = Counter("wharf_upstream_circuit_opened",
                                               "Times the circuit to an upstream opened",
                                               ["upstream"], registry=r)
        self.object_storage_circuit = Gauge("wharf_object_storage_circuit_state",
                                            "Circuit breaker of the object storage bucket (storage.s3): "
                                            "0 closed, 1 half-open (one probe goes through), 2 open "
                                            "(the bucket is skipped)", ["bucket"], registry=r)
        self.object_storage_missed = Gauge("wharf_object_storage_missed_uploads",
                                           "Blobs whose write-through the bucket failed, waiting to be "
                                           "uploaded again", registry=r)
        self.fills_in_flight = Gauge("wharf_fills_in_flight", "Upstream downloads in progress",
                                     registry=r)
        self.store_bytes = Gauge("wharf_store_bytes", "Bytes stored, by kind (cached, pushed)",
                                 ["kind"], registry=r)
        self.store_budget = Gauge("wharf_store_budget_bytes", "Size budget for cached content",
                                  registry=r)
        self.evictions = Counter("wharf_evictions", "Blobs evicted under the size budget", registry=r)
        self.shared_degraded = Gauge("wharf_shared_cache_degraded",
                                     "1 while Redis (redis.url) does not answer and caches and locks "
                                     "are shared through the local store instead", registry=r)
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self._cache_children: dict[tuple[str, str], object] = {}
        self.evicted_bytes = Counter("wharf_evicted_bytes", "Bytes evicted under the size budget",
                                     registry=r)
        self.store_free_bytes = Gauge("wharf_store_free_bytes", "Free bytes on the store's filesystem",
                                      registry=r)
        self.store_full = Gauge("wharf_store_full", "1 while the store cannot take new content (disk full)",
                                registry=r)
        self.store_full_refusals = Counter("wharf_store_full_refusals",
                                           "Writes refused or failed because the store was full", registry=r)
        # the limit half: connections and clients Wharf cut off, and how late the event loop runs
        self.connections_open = Gauge("wharf_connections_open", "Client connections open", registry=r)
        self.connections_refused = Counter("wharf_connections_refused",
                                           "Connections refused over server.max_connections", registry=r)
        self.connections_shed = Counter("wharf_connections_shed",
                                        "Idle or half-sent connections closed at server.max_connections "
                                        "to make room for a new one", registry=r)
        self.connections_timed_out = Counter("wharf_connections_timed_out",
                                             "Connections closed because the client stalled, by what it "
                                             "stalled on (header, body, send)", ["stage"], registry=r)
        self.requests_limited = Counter("wharf_client_requests_limited",
                                        "Requests answered 429 under the per-client rate, by what the "
                                        "client was known by (address, credential)", ["client"], registry=r)
        self.login_failures = Counter("wharf_login_failures", "Failed sign-ins (docker login, /token, Basic on "
                                      "a registry route), by reason", ["reason"], registry=r)
        self.login_throttled = Counter("wharf_login_throttled", "Sign-ins refused with 429 after repeated "
                                       "failures from one address or for one user", registry=r)
        self.loop_lag = Histogram("wharf_event_loop_lag_seconds",
                                  "How late the event loop ran a timer (a probe every 0.25 s)",
                                  buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                  registry=r)
        self.loop_lag_max = Gauge("wharf_event_loop_lag_max_seconds",
                                  "Worst event-loop lag seen in the last minute", registry=r)

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


# how a gauge's per-worker values combine: in-flight counts add up; store totals, budgets and
# upstream quota are facts every worker reports alike (the most recent or highest wins)
_GAUGE_SUM = frozenset({"wharf_fills_in_flight", "wharf_connections_open",
                        "wharf_object_storage_missed_uploads"})
_GAUGE_MIN = frozenset({"wharf_upstream_ratelimit_remaining", "wharf_store_free_bytes"})


class MetricsExchange:
    """One exposition for all worker processes on a store.

    Rules: each worker writes its samples to ``directory/<worker id>.json`` (atomically) every
    ``publish()``; a scrape publishes this worker's samples, then merges every file written in
    the last ``stale_after`` seconds (a dead worker's file ages out and is removed).
    """

    def __init__(self, metrics: Metrics, directory: Path, stale_after: float = 10.0) -> None:
        self._metrics = metrics
        self._directory = directory
        self._directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / f"{uuid.uuid4().hex}.json"
        self._stale_after = stale_after

    @property
    def worker_id(self) -> str:
        """The name this worker publishes under (its file's stem)."""
        return self._path.stem

    def publish(self) -> None:
        temp = self._path.with_suffix(".tmp")
        temp.write_text(json.dumps(families_of(self._metrics)))
        os.replace(temp, self._path)

    def close(self) -> None:
        self._path.unlink(missing_ok=True)

    def exposition(self) -> bytes:
        """The text exposition of every live worker's samples, merged."""
        self.publish()
        merged: dict[str, dict] = {}
        for families in self.workers().values():
            for family in families:
                _merge_family(merged, family)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collected(merged))
        return generate_latest(registry)


    def workers(self) -> dict[str, list[dict]]:
        """Every live worker's last published samples, by worker id (files gone stale are removed)."""
        found: dict[str, list[dict]] = {}
        now = time.time()
        for path in self._directory.glob("*.json"):
            try:
                if now - path.stat().st_mtime > self._stale_after:
                    path.unlink(missing_ok=True)
                    continue
                found[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced or removed meanwhile
        return found


def families_of(metrics: Metrics) -> list[dict]:
    """This process's samples as plain data: what a worker publishes, and what the dashboard reads."""
    return [{"name": f.name, "type": f.type, "help": f.documentation,
             "samples": [[s.name, s.labels, s.value] for s in f.samples if not s.name.endswith("_created")]}
            for f in metrics.registry.collect()]


def _merge_family(merged: dict[str, dict], family: dict) -> None:
    name = family["name"]
    into = merged.setdefault(name, {"type": family["type"], "help": family["help"], "values": {}})
    values = into["values"]
    if family["type"] != "gauge":
        combine = float.__add__
    elif name in _GAUGE_SUM:
        combine = float.__add__
    elif name in _GAUGE_MIN:
        combine = min
    else:
        combine = max
    for sample_name, labels, value in family["samples"]:
        key = (sample_name, tuple(sorted(labels.items())))
        values[key] = combine(values[key], float(value)) if key in values else float(value)


class _Collected:
    """A collector that yields merged families (for ``generate_latest``)."""

    def __init__(self, merged: dict[str, dict]) -> None:
        self._merged = merged

    def collect(self):
        for name, family in self._merged.items():
            metric = Metric(name, family["help"], family["type"])
            for (sample_name, labels), value in family["values"].items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric
