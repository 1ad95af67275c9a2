"""Every cache decision counted (``wharf_cache_requests_total``) and, at debug level, logged;
concurrent requests for the same upstream answer merged into one (``coalesced``)."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Hashable

from proxy.metrics import Metrics
from proxy.registry.tasks import SingleFlight

log = logging.getLogger("wharf.cache")


class CacheDecisions:
    """What the pull-through cache decided (hit, miss, stale, coalesced…), and its single flight."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._flights = SingleFlight()

    def count(self, kind: str, result: str) -> None:
        """Count a cache decision; at debug level, log it (with the request's id, not the request)."""
        self._metrics.count_cache(kind, result)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("cache %s: %s", kind, result, extra={"kind": kind, "result": result})

    def running(self, key: Hashable) -> bool:
        return self._flights.running(key)

    async def coalesced(self, kind: str, key: Hashable, factory: Callable[[], Awaitable]) -> tuple:
        """(result, joined): one run of ``factory`` for all concurrent callers with ``key``."""
        result, joined = await self._flights.run(key, factory)
        if joined:
            self.count(kind, "coalesced")
        return result, joined
