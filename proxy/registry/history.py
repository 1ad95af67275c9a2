"""The cache dashboard's history: samples of Wharf's own counters, kept in the store's metadata.

Rules:
- every ``web.sample_seconds`` one process of the store (the one holding the history lock; the
  others try again as often, so a dead sampler is replaced) records a sample: the cumulative
  counters of every live worker (cache outcomes by kind and result, bytes served from the cache
  and from upstream, requests sent upstream, evictions and evicted bytes) and the store's totals
  against its budget;
- the totals are Wharf's own, across restarts and workers: each worker's counters are read with
  the value last seen of that worker, and only what grew since is added (a worker that is new, or
  restarted, counts from zero), so a restart never makes a chart fall;
- samples older than ``web.history_hours`` are dropped, and at most ``MAX_SAMPLES`` are kept (a
  long history sampled often is sampled less often instead); the history lives in one metadata
  document (it survives restarts, and every worker reads the same one), read at most once a
  ``_REREAD`` seconds per process for the pages;
- ``current()`` is a sample taken now without storing it (the figures of a page loaded just
  after a pull), in any worker.

No Prometheus needed: the counters are read from this process's collectors and, with several
workers, from the files ``MetricsExchange`` publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, Mapping

from proxy.config import WebConfig
from proxy.metrics import Metrics, MetricsExchange, families_of
from proxy.storage.blobs import BlobStore
from proxy.storage.budget import Budget
from proxy.storage.meta import MetaStore

log = logging.getLogger("wharf.history")

DOCUMENT = "cache-history"  # the metadata document: {"totals", "seen", "samples"}
MAX_SAMPLES = 2000
_REREAD = 1.0
# cache outcomes answered from what Wharf holds, and those that needed an upstream answer
HIT_RESULTS = frozenset({"hit", "stale", "revalidated", "coalesced", "negative", "offline"})
MISS_RESULTS = frozenset({"miss", "offline_missing"})
# hits that sent no request upstream of their own (a revalidation asks; a stale answer may have)
SAVED_RESULTS = frozenset({"hit", "coalesced", "negative", "offline"})
# upstream request outcomes that never left Wharf
_NOT_SENT = frozenset({"blocked", "circuit_open", "offline"})


def counters_of(families: list[dict]) -> dict[str, float]:
    """The counters the dashboard follows, flat (``cache:blob:hit``, ``served:cache``,
    ``upstream:<name>``, ``evictions``, ``evicted_bytes``), from one worker's samples."""
    flat: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        flat[key] = flat.get(key, 0.0) + value

    for family in families:
        name = family["name"]
        for sample_name, labels, value in family["samples"]:
            if not sample_name.endswith("_total"):
                continue
            if name == "wharf_cache_requests":
                add(f"cache:{labels.get('kind')}:{labels.get('result')}", value)
            elif name == "wharf_bytes_served":
                add(f"served:{labels.get('source')}", value)
            elif name == "wharf_upstream_requests" and labels.get("status") not in _NOT_SENT:
                add(f"upstream:{labels.get('upstream')}", value)
            elif name == "wharf_evictions":
                add("evictions", value)
            elif name == "wharf_evicted_bytes":
                add("evicted_bytes", value)
    return flat


def advance(state: Mapping[str, Any], readings: Mapping[str, Mapping[str, float]]) -> tuple[dict, dict]:
    """(totals, seen) after adding what each worker's counters grew by since last seen.

    A worker not seen before (new or restarted), or whose counter went down (restarted under the
    same id), counts from zero; workers no longer reporting are forgotten.
    """
    totals = dict(state.get("totals") or {})
    seen = state.get("seen") or {}
    for worker, counters in readings.items():
        before = seen.get(worker) or {}
        for key, value in counters.items():
            previous = before.get(key, 0.0)
            grown = value - previous if value >= previous else value
            if grown:
                totals[key] = totals.get(key, 0.0) + grown
    return totals, {worker: dict(counters) for worker, counters in readings.items()}


def figures(counters: Mapping[str, float]) -> dict[str, Any]:
    """What the dashboard shows of a set of counters (totals, or the difference of two samples)."""
    hits = misses = saved = 0.0
    by_kind: dict[str, dict[str, float]] = {}
    upstream_requests = 0.0
    for key, value in counters.items():
        section, _, rest = key.partition(":")
        if section == "cache":
            kind, _, result = rest.partition(":")
            kind_counts = by_kind.setdefault(kind, {"hits": 0.0, "misses": 0.0})
            if result in HIT_RESULTS:
                hits += value
                kind_counts["hits"] += value
            elif result in MISS_RESULTS:
                misses += value
                kind_counts["misses"] += value
            if result in SAVED_RESULTS:
                saved += value
        elif section == "upstream":
            upstream_requests += value
    answered = hits + misses
    return {"hits": int(hits), "misses": int(misses),
            "hit_ratio": round(hits / answered, 4) if answered else None,
            "bytes_from_cache": int(counters.get("served:cache", 0)),
            "bytes_from_upstream": int(counters.get("served:upstream", 0)),
            "upstream_requests": int(upstream_requests), "upstream_requests_saved": int(saved),
            "evictions": int(counters.get("evictions", 0)), "evicted_bytes": int(counters.get("evicted_bytes", 0)),
            "by_kind": {kind: {"hits": int(c["hits"]), "misses": int(c["misses"])}
                        for kind, c in sorted(by_kind.items()) if c["hits"] or c["misses"]}}


def difference(later: Mapping[str, float], earlier: Mapping[str, float]) -> dict[str, float]:
    """Counters grown between two samples' totals."""
    return {key: value - earlier.get(key, 0.0) for key, value in later.items()}


class CacheHistory:
    """The samples (``samples()``), the figures now (``current()``), the recent evictions, and the
    sampler (``start``/``stop``)."""

    def __init__(self, metrics: Metrics, meta: MetaStore, blobs: BlobStore, budget: Budget, config: WebConfig) -> None:
        self._metrics = metrics
        self._meta = meta
        self._blobs = blobs
        self._budget = budget
        self._keep = config.history_hours * 3600
        self._every = max(config.sample_seconds, self._keep / MAX_SAMPLES)
        self._read: tuple[float, dict] = (0.0, {})  # (monotonic time, document) last read for the pages
        self._exchange: MetricsExchange | None = None
        self._worker = uuid.uuid4().hex  # this process's id when it is the only worker
        self._task: asyncio.Task | None = None
        self._writing: asyncio.Future | None = None  # a sample being written in a thread
        self.sampling = False  # this process holds the history lock (for tests and the page)

    @property
    def sample_seconds(self) -> float:
        """How often a sample is taken (``web.sample_seconds``, or less often: ``MAX_SAMPLES``)."""
        return self._every

    # reading ------------------------------------------------------------------------------------
    async def samples(self) -> list[dict]:
        """The stored samples, oldest first: ``{"at", "counters", "store"}`` (counters are totals)."""
        return list((await asyncio.to_thread(self._recent)).get("samples") or [])

    async def current(self) -> dict:
        """A sample taken now (stored samples unchanged)."""
        return await asyncio.to_thread(self._take_now)

    async def evictions(self) -> list[dict]:
        """The last blobs evicted, newest first (``Budget.recent_evictions``)."""
        return await asyncio.to_thread(self._budget.recent_evictions)

    def _stored(self) -> dict:
        return self._meta.document(DOCUMENT, fresh=True) or {}

    def _recent(self) -> dict:
        """The stored document, read again when the last reading is older than ``_REREAD``."""
        read_at, document = self._read
        if time.monotonic() - read_at >= _REREAD:
            document = self._stored()
            self._read = (time.monotonic(), document)
        return document

    def _readings(self) -> dict[str, dict[str, float]]:
        """Each live worker's counters by worker id; this process's own read live."""
        if self._exchange is None:
            return {self._worker: counters_of(families_of(self._metrics))}
        readings = {worker: counters_of(families) for worker, families in self._exchange.workers().items()}
        readings[self._exchange.worker_id] = counters_of(families_of(self._metrics))
        return readings

    def _store_totals(self) -> dict[str, int]:
        return {"cached_bytes": self._meta.store_bytes("cached"), "pushed_bytes": self._meta.store_bytes("pushed"),
                "kept_bytes": self._meta.store_bytes("kept"), "budget_bytes": int(self._budget.max_cached_bytes)}

    def _take_now(self) -> dict:
        totals, _ = advance(self._recent(), self._readings())
        return {"at": time.time(), "counters": totals, "store": self._store_totals()}

    # sampling -----------------------------------------------------------------------------------
    def sample(self) -> dict:
        """Record one sample (the sampler's thread; the history lock held); returns it."""
        state = self._stored()
        totals, seen = advance(state, self._readings())
        now = time.time()
        point = {"at": now, "counters": totals, "store": self._store_totals()}
        cutoff = now - self._keep
        kept = [s for s in state.get("samples") or [] if cutoff <= s.get("at", 0) <= now]
        limit = min(MAX_SAMPLES, int(self._keep / self._every) + 1)  # a clock set back cannot grow it either
        samples = (kept + [point])[-limit:]
        self._meta.set_document(DOCUMENT, {"totals": totals, "seen": seen, "samples": samples})
        return point

    async def start(self, exchange: MetricsExchange | None) -> None:
        """Begin sampling in the background (at startup; with several workers, their exchange)."""
        self._exchange = exchange
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop sampling (at shutdown, before the store closes)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writing is not None:  # the thread outlives the cancelled task: let it finish
            await asyncio.wait([self._writing])

    async def _run(self) -> None:
        lock_path = self._blobs.root / "cache-history.lock"
        lock = None
        try:
            while lock is None:
                lock = self._blobs.try_lock(lock_path)
                if lock is None:
                    await asyncio.sleep(self._every)
            self.sampling = True
            while True:
                self._writing = asyncio.ensure_future(asyncio.to_thread(self.sample))
                try:
                    await asyncio.shield(self._writing)
                except Exception:
                    log.exception("cache history sample failed")
                await asyncio.sleep(self._every)
        finally:
            self.sampling = False
            if lock is not None:
                self._blobs.unlock(lock)
