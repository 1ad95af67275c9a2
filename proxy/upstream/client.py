"""The client for one remote registry: auth challenges, token cache, rate limits, error translation.

All upstreams share the app's single ``aiohttp.ClientSession``. Rules:
- a request goes out with the cached token for (scope, credential) when we have one; a 401 with
  a Bearer challenge fetches a token from the realm (only the upstream's own host or configured
  ``realm_hosts``) and retries once; a Basic challenge is answered with Basic credentials;
- tokens are cached until their expiry (less a margin), per scope and credential hash;
- ``ratelimit-limit`` / ``ratelimit-remaining`` / ``retry-after`` are read off every response and
  shared with the other workers and replicas, so one 429 keeps all of them away from upstream;
- upstream failures are translated here into domain errors, nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol
from urllib.parse import urlsplit

import aiohttp

from proxy.config import UpstreamConfig
from proxy.errors import (Denied, ManifestUnknown, OCIError, TooManyRequests, Unauthorized,
                          Unavailable)
from proxy.metrics import Metrics
from proxy.upstream.auth import Challenge, Credential, parse_challenge, pull_scope

log = logging.getLogger("wharf.upstream")
_TOKEN_MARGIN = 10.0
_RATE_MEMORY = 6 * 3600.0  # Docker Hub's window: what upstream said of its quota is kept that long
_RATE_RE = re.compile(r"^\s*(\d+)")


class SharedFacts(Protocol):
    """Where quota facts are shared with other workers and replicas (the app's shared cache)."""

    async def get(self, key: str) -> Any: ...

    async def set(self, key: str, value: Any, ttl: float) -> None: ...


@dataclass(slots=True)
class RateLimit:
    """What upstream last told us about its quota."""

    limit: int | None = None
    remaining: int | None = None
    blocked_until: float = 0.0

    def blocked(self) -> bool:
        return time.monotonic() < self.blocked_until


def _parse_int(value: str | None) -> int | None:
    if not value:
        return None
    match = _RATE_RE.match(value)
    return int(match.group(1)) if match else None


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 60.0


class Upstream:
    """One configured remote registry."""

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession, metrics: Metrics,
                 shared: SharedFacts | None = None) -> None:
        self.config = config
        self.name = config.name
        self.base_url = config.url
        self._session = session
        self._metrics = metrics
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._challenge: Challenge | None = None
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout,
                                              sock_read=config.read_timeout)
        self.rate = RateLimit()
        self._shared = shared  # quota and Retry-After shared with other workers and replicas
        self.configured_credential = (Credential.basic(config.username, config.password)
                                      if config.has_credentials else None)

    # public API ------------------------------------------------------------------------------
    async def request(self, method: str, repo: str, suffix: str, credential: Credential | None, *,
                      headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
                      not_found: type[OCIError] = ManifestUnknown) -> aiohttp.ClientResponse:
        """Send ``METHOD /v2/<repo>/<suffix>``; return a 2xx response or raise a domain error.

        The caller owns the returned response and must release it.
        """
        url = f"{self.base_url}/v2/{repo}/{suffix}"
        scope = pull_scope(repo)
        response = await self._send(method, url, scope, credential, headers, params)
        if response.status == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
            response.release()
            if challenge is not None and challenge.scheme in ("bearer", "basic"):
                self._challenge = challenge
                self._tokens.pop((scope, self._cred_key(credential)), None)
                if challenge.scheme == "bearer":
                    await self._fetch_token(challenge, scope, credential)
                response = await self._send(method, url, scope, credential, headers, params)
        if response.status < 300:
            return response
        response.release()
        raise self._translate(response, not_found)

    async def check_credentials(self, repo: str | None, credential: Credential) -> bool:
        """Have upstream verify ``credential``: exchange it for a token (on ``repo``'s pull scope, or
        with no scope for a login) or present it as Basic at ``/v2/``.

        True: upstream accepted it; False: upstream asks for no authentication, so nothing was
        checked; raises Unauthorized if upstream refused it.
        """
        scope = pull_scope(repo) if repo else ""
        probe = await self._send("GET", f"{self.base_url}/v2/", scope, None, None, None)
        challenge = parse_challenge(probe.headers.get("WWW-Authenticate"))
        probe.release()
        if probe.status != 401 or challenge is None:
            return False
        self._challenge = challenge
        if challenge.scheme == "bearer":
            await self._fetch_token(challenge, scope, credential)
            return True
        if challenge.scheme == "basic":
            answer = await self._send("GET", f"{self.base_url}/v2/", scope, credential, None, None)
            answer.release()
            if answer.status in (401, 403):
                raise Unauthorized("upstream refused the credentials", detail={"upstream": self.name})
            return True
        return False

    # internals -------------------------------------------------------------------------------
    @staticmethod
    def _cred_key(credential: Credential | None) -> str:
        return credential.id if credential else "-"

    def _auth_header(self, scope: str, credential: Credential | None) -> str | None:
        token = self._tokens.get((scope, self._cred_key(credential)))
        if token and token[1] > time.monotonic():
            return f"Bearer {token[0]}"
        if credential is None:
            return None
        if credential.scheme == "bearer":
            return credential.header()  # a token the client got itself: pass it through
        if self._challenge is not None and self._challenge.scheme == "basic":
            return credential.header()
        return None

    async def _send(self, method: str, url: str, scope: str, credential: Credential | None,
                    headers: Mapping[str, str] | None, params: Mapping[str, str] | None
                    ) -> aiohttp.ClientResponse:
        await self._adopt_shared_rate()
        if self.rate.blocked():
            self._metrics.upstream_requests.labels(self.name, method, "blocked").inc()
            raise TooManyRequests(f"upstream {self.name} asked us to wait (Retry-After)")
        if (self._challenge is not None and self._challenge.scheme == "bearer"
                and (scope, self._cred_key(credential)) not in self._tokens
                and not (credential and credential.scheme == "bearer")):
            await self._fetch_token(self._challenge, scope, credential)
        request_headers = dict(headers or {})
        auth = self._auth_header(scope, credential)
        if auth:
            request_headers["Authorization"] = auth
        started = time.perf_counter()
        try:
            response = await self._session.request(method, url, headers=request_headers, params=params,
                                                   timeout=self._timeout, allow_redirects=True,
                                                   auto_decompress=False)
        except asyncio.TimeoutError:
            self._metrics.upstream_requests.labels(self.name, method, "timeout").inc()
            self._debug(method, url, "timeout", started)
            raise Unavailable(f"upstream {self.name} timed out") from None
        except aiohttp.ClientError as exc:
            self._metrics.upstream_requests.labels(self.name, method, "error").inc()
            self._debug(method, url, type(exc).__name__, started)
            raise Unavailable(f"upstream {self.name} unreachable: {type(exc).__name__}") from None
        self._metrics.upstream_requests.labels(self.name, method, str(response.status)).inc()
        self._debug(method, url, response.status, started, len(response.history))
        if self._note_rate_limit(response) and self._shared is not None:
            await self._shared.set(f"rl:{self.name}", {
                "limit": self.rate.limit, "remaining": self.rate.remaining,
                "blocked_until": time.time() + max(0.0, self.rate.blocked_until - time.monotonic()),
            }, _RATE_MEMORY)
        return response

    def _debug(self, method: str, url: str, status: int | str, started: float, redirects: int = 0) -> None:
        """A debug line per upstream request: the URL asked (never a redirect's, which may carry a
        signature), status or error, time to headers; never a header."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("upstream %s %s: %s", method, url, status,
                      extra={"upstream": self.name, "method": method, "url": url, "status": status,
                             "redirects": redirects, "duration_ms": round((time.perf_counter() - started) * 1000, 3)})

    def _note_rate_limit(self, response: aiohttp.ClientResponse) -> bool:
        """Keep what upstream says of its quota; True when it said anything."""
        limit = _parse_int(response.headers.get("ratelimit-limit"))
        remaining = _parse_int(response.headers.get("ratelimit-remaining"))
        if limit is not None:
            self.rate.limit = limit
            self._metrics.ratelimit_limit.labels(self.name).set(limit)
        if remaining is not None:
            self.rate.remaining = remaining
            self._metrics.ratelimit_remaining.labels(self.name).set(remaining)
        blocked = response.status == 429 or (response.status == 503 and "retry-after" in response.headers)
        if blocked:
            wait = _retry_after(response.headers.get("retry-after")) or 30.0
            self.rate.blocked_until = time.monotonic() + wait
        return blocked or limit is not None or remaining is not None

    async def _adopt_shared_rate(self) -> None:
        """Take what another worker or replica last learned of the quota (a 429 above all)."""
        if self._shared is None:
            return
        shared = await self._shared.get(f"rl:{self.name}")
        if not shared:
            return
        left = shared["blocked_until"] - time.time()
        if left > 0:
            self.rate.blocked_until = max(self.rate.blocked_until, time.monotonic() + left)
        if shared["remaining"] is not None:
            self.rate.remaining = shared["remaining"]
            self._metrics.ratelimit_remaining.labels(self.name).set(shared["remaining"])
        if shared["limit"] is not None:
            self.rate.limit = shared["limit"]
            self._metrics.ratelimit_limit.labels(self.name).set(shared["limit"])

    def _realm_allowed(self, realm: str) -> bool:
        host = urlsplit(realm).hostname or ""
        own = urlsplit(self.base_url).hostname or ""
        return host == own or host in self.config.realm_hosts

    async def _fetch_token(self, challenge: Challenge, scope: str, credential: Credential | None) -> None:
        """Get a Bearer token for ``scope`` from the challenge's realm, with the credential if any."""
        realm = challenge.realm
        if not realm or not self._realm_allowed(realm):
            raise Unavailable(f"upstream {self.name} sent an untrusted token realm")
        if credential is not None and credential.scheme == "bearer":
            return  # the client's own token goes through as it is
        params = {"scope": scope} if scope else {}  # no scope: a login, checking the credential only
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        headers = {"Authorization": credential.header()} if credential else {}
        started = time.perf_counter()
        try:
            async with self._session.get(realm, params=params, headers=headers,
                                         timeout=self._timeout) as response:
                self._metrics.upstream_requests.labels(self.name, "TOKEN", str(response.status)).inc()
                if log.isEnabledFor(logging.DEBUG):  # who asked, never what was presented or issued
                    log.debug("token from %s for %s: %d", realm, scope or "a login (no scope)", response.status,
                              extra={"upstream": self.name, "realm": realm, "scope": scope,
                                     "credential": credential.scheme if credential else None,
                                     "status": response.status,
                                     "duration_ms": round((time.perf_counter() - started) * 1000, 3)})
                if response.status in (401, 403):
                    raise Unauthorized("upstream refused the credentials",
                                       detail={"upstream": self.name})
                if response.status >= 300:
                    raise Unavailable(f"token service of {self.name} answered {response.status}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            raise Unavailable(f"token service of {self.name} unreachable") from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise Unavailable(f"token service of {self.name} sent no token")
        expires_in = float(body.get("expires_in") or 60)
        self._tokens[(scope, self._cred_key(credential))] = (
            token, time.monotonic() + max(1.0, expires_in - _TOKEN_MARGIN))

    def _translate(self, response: aiohttp.ClientResponse, not_found: type[OCIError]) -> OCIError:
        status = response.status
        if status == 401:
            return Unauthorized(f"upstream {self.name} requires authentication")
        if status == 403:
            return Denied(f"upstream {self.name} denied access")
        if status == 404:
            return not_found()
        if status == 429:
            return TooManyRequests(f"upstream {self.name} rate limit reached")
        return Unavailable(f"upstream {self.name} answered {status}")

