"""Per-client request rate: a token bucket per client, ``429 TOOMANYREQUESTS`` with ``Retry-After``.

Rules (``clients.requests_per_second``, ``clients.burst``; off by default):
- a request without a credential is charged to its client address;
- a request with a credential (Basic, or a Bearer token other than the anonymous one) is charged to
  that credential, known only by a hash of it (``Credential.id``), never by the secret. Wharf
  cannot tell a real credential from an invented one before asking upstream, so the first
  request of a credential not seen recently is also charged to the address, and every
  credential's requests are charged to their address's ceiling too (``clients.address_ceiling``
  times the rate and the burst, shared by all credentials from that address): inventing
  credentials gets a client at most that ceiling, however many it invents;
- ``/healthz``, ``/readyz``, ``/metrics`` and the route between replicas (``proxy.http.peer``,
  signed or refused at once) are never limited;
- replayed answers (``proxy.http.replayserver``) are charged the same way, before they are sent;
  a client over its rate is left to the application, which answers the 429.
A refused request takes nothing from the bucket. Buckets are kept for at most ``_MAX_BUCKETS``
clients; the oldest are forgotten first (a forgotten client starts again with a full burst).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from aiohttp import web

from proxy.config import ClientLimitsConfig
from proxy.errors import TooManyRequests
from proxy.metrics import Metrics
from proxy.registry.tokens import ANONYMOUS_TOKEN
from proxy.upstream.auth import credential_from_header

_MAX_BUCKETS = 100_000
_UNLIMITED_ROUTES = frozenset({"healthz", "readyz", "metrics", "peer_blob"})  # peer_blob: signed, or 403 at once


class ClientKey(NamedTuple):
    """Who a request is charged to: its address, and the hash of its credential if it has one."""

    address: str
    credential: str | None


def client_key(address: str | None, authorization: str | None) -> ClientKey:
    """The key of a request from ``address`` carrying the ``Authorization`` header given."""
    credential = credential_from_header(authorization)
    if credential is None or (credential.scheme == "bearer" and credential.secret == ANONYMOUS_TOKEN):
        return ClientKey(address or "-", None)
    return ClientKey(address or "-", credential.id)


class ClientLimiter:
    """Token buckets by client: ``rate`` requests a second sustained, ``burst`` at once."""

    def __init__(self, config: ClientLimitsConfig) -> None:
        self.rate = config.requests_per_second
        self.burst = float(config.burst or max(1, math.ceil(10 * self.rate)))
        self.enabled = self.rate > 0
        self.ceiling = config.address_ceiling
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, when counted]

    def take(self, key: ClientKey) -> float | None:
        """Charge one request to ``key``; None if allowed, else the seconds until it would be."""
        now = time.monotonic()
        if key.credential is None:
            return self._take("a:" + key.address, now)
        name = "c:" + key.credential
        if name not in self._buckets:  # a credential not seen recently: the address pays its way in
            wait = self._take("a:" + key.address, now)
            if wait is not None:
                return wait
        wait = self._take("A:" + key.address, now, self.ceiling)  # all credentials of the address
        if wait is not None:
            return wait
        return self._take(name, now)

    def _take(self, name: str, now: float, scale: int = 1) -> float | None:
        rate, burst = self.rate * scale, self.burst * scale
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_oldest()
            bucket = self._buckets[name] = [burst, now]
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return (1.0 - tokens) / rate

    def _forget_oldest(self) -> None:
        for name in list(self._buckets)[: max(1, _MAX_BUCKETS // 10)]:
            del self._buckets[name]


def retry_after(wait: float) -> str:
    """``Retry-After`` in whole seconds, never 0 (a client told 0 would retry at once)."""
    return str(max(1, math.ceil(wait)))


def client_limit_middleware(limiter: ClientLimiter, metrics: Metrics):
    """The middleware that answers ``TooManyRequests`` to a client over its rate."""

    @web.middleware
    async def limit_clients(request: web.Request, handler) -> web.StreamResponse:
        if limiter.enabled and request.match_info.route.name not in _UNLIMITED_ROUTES:
            key = client_key(request.remote, request.headers.get("Authorization"))
            wait = limiter.take(key)
            if wait is not None:
                metrics.requests_limited.labels("address" if key.credential is None else "credential").inc()
                raise TooManyRequests(f"more than {limiter.rate:g} requests a second from this client; "
                                      f"retry in {retry_after(wait)} s",
                                      headers={"Retry-After": retry_after(wait)})
        return await handler(request)

    return limit_clients
