"""The client for one remote registry: auth challenges, token cache, timeouts, circuit, rate limits,
error translation.

All upstreams share the app's single ``aiohttp.ClientSession`` (each with its own TLS context,
``upstream/tls.py``). Rules:
- a request goes out with the cached token for (scope, credential) when we have one; a 401 with
  a Bearer challenge fetches a token from the realm and retries once; a Basic challenge is
  answered with Basic credentials;
- a realm is trusted only on the upstream's own origin (scheme, host and port) or a configured
  ``realm_hosts`` entry (``auth.realm_trusted``); an untrusted one is refused and not remembered;
- the challenge is remembered so that a new scope fetches its token before asking; when that
  token service no longer gives tokens (it answers 404 or another non-auth error), the
  challenge is forgotten and the request goes without one: upstream's next 401 teaches it again;
- tokens are cached until their expiry (less a margin), per scope and credential hash;
- timeouts: ``connect_timeout`` for the connection, ``first_byte_timeout`` from sending the
  request to its response headers (connection included), ``read_timeout`` between body reads;
- the circuit breaker (``proxy/circuit.py``, one per upstream): a failure is a connection that
  could not be made (refused, unresolvable, TLS refused), a timeout (connect or first byte), or a
  5xx other than a 503 with ``Retry-After`` (that is back-off, kept as a rate limit); any other
  answer is a success. Only what happens up to the response headers counts: a body that stalls
  midway is the reader's to report. While it is open, requests fail at once with Unavailable
  and ``Retry-After``;
- quota readings and back-off (``upstream/quota.py``) are read off every response and shared with
  the other workers and replicas, so one 429 keeps all of them away from upstream; Wharf's own
  429 while blocked says when to come back (``Retry-After``);
- an offline upstream (``offline: true``, top level or its own) is never contacted: nothing is
  sent (``UpstreamOffline``), and a credential check at ``/token`` neither accepts nor refuses
  (offline Wharf serves only public content, so an unchecked credential opens nothing);
- upstream failures are translated here into domain errors, nowhere else;
- what upstream answers goes up as domain objects (``upstream/answers.py``), never as a response:
  bodies are read and capped, and headers read, in this package.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping, Protocol

import aiohttp

from proxy.circuit import CLOSED, HALF_OPEN, STATE_VALUES, Circuit
from proxy.config import UpstreamConfig
from proxy.errors import (BlobUnknown, Denied, ManifestUnknown, NameUnknown, OCIError, TooManyRequests,
                          Unauthorized, Unavailable)
from proxy.metrics import Metrics
from proxy.oci.digest import Digest
from proxy.oci.media import MAX_MANIFEST_BYTES, OCI_INDEX, UPSTREAM_ACCEPT
from proxy.upstream.answers import (MAX_TAG_LIST_BYTES, UpstreamBlob, UpstreamHead, UpstreamManifest,
                                    UpstreamReferrers, UpstreamTags, next_page_query, read_capped,
                                    read_manifest)
from proxy.upstream.auth import Challenge, Credential, parse_challenge, pull_scope, realm_trusted
from proxy.upstream.quota import RateLimit
from proxy.upstream.tls import client_context, describe_tls_error, warn_unverified

_TOKEN_MARGIN = 10.0
log = logging.getLogger("wharf.upstream")


class SharedFacts(Protocol):
    """Where quota facts are shared with other workers and replicas (the app's shared cache)."""

    async def get(self, key: str) -> Any: ...

    async def set(self, key: str, value: Any, ttl: float) -> None: ...


class _TokenServiceAnswered(Unavailable):
    """The token service answered, but gave no token (404, 5xx, no token in the body)."""


class UpstreamOffline(Unavailable):
    """The upstream is offline (``offline: true``): Wharf sends it nothing."""


class Upstream:
    """One configured remote registry."""

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession, metrics: Metrics,
                 shared: SharedFacts | None = None, offline: bool = False) -> None:
        self.config = config
        self.name = config.name
        self.offline = offline or config.offline  # ``Config.is_offline``: the top-level switch too
        self.base_url = config.url
        self._session = session
        self._metrics = metrics
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._challenge: Challenge | None = None
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout,
                                              sock_read=config.read_timeout)
        self._ssl = client_context(config)
        warn_unverified(config)
        self._rate = RateLimit()
        self._circuit = Circuit(config.circuit_failures, config.circuit_cooldown)
        metrics.upstream_circuit.labels(self.name).set_function(
            lambda: STATE_VALUES[self._circuit.state])
        self._shared = shared  # quota and Retry-After shared with other workers and replicas
        self.configured_credential = (Credential.basic(config.username, config.password)
                                      if config.has_credentials else None)

    @property
    def rate(self) -> RateLimit:
        """What upstream last said of its quota, readings past their window dropped."""
        if self._rate.lapse():
            for gauge in (self._metrics.ratelimit_limit, self._metrics.ratelimit_remaining):
                try:
                    gauge.remove(self.name)
                except KeyError:
                    pass
        return self._rate

    async def quota(self) -> RateLimit:
        """What upstream last said of its quota, another worker's or replica's reading if newer."""
        await self._adopt_shared_rate()
        return self.rate

    @property
    def circuit_state(self) -> str:
        """This process's circuit to upstream: closed, half_open or open (``circuit.py``)."""
        return self._circuit.state

    # public API: the remote registry's manifests, blobs and lists, as domain objects ---------
    async def get_manifest(self, repo: str, reference: str, credential: Credential | None,
                           accept: str = UPSTREAM_ACCEPT) -> UpstreamManifest:
        """GET a manifest by tag or digest: the body whole and within ``MAX_MANIFEST_BYTES``
        (404: ManifestUnknown)."""
        response = await self._request("GET", repo, f"manifests/{reference}", credential,
                                       headers={"Accept": accept})
        try:
            return await read_manifest(response, MAX_MANIFEST_BYTES)
        finally:
            response.release()

    async def head_manifest(self, repo: str, reference: str, credential: Credential | None) -> UpstreamHead:
        """HEAD a manifest by tag or digest (404: ManifestUnknown)."""
        return await self._head(repo, f"manifests/{reference}", credential, ManifestUnknown,
                                {"Accept": UPSTREAM_ACCEPT})

    async def head_blob(self, repo: str, digest: Digest, credential: Credential | None) -> UpstreamHead:
        """HEAD a blob (404: BlobUnknown)."""
        return await self._head(repo, f"blobs/{digest}", credential, BlobUnknown, None)

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: Digest, credential: Credential | None
                        ) -> AsyncIterator[UpstreamBlob]:
        """GET a blob as a sized stream (404: BlobUnknown), released when the ``async with`` ends."""
        response = await self._request("GET", repo, f"blobs/{digest}", credential, not_found=BlobUnknown)
        try:
            yield UpstreamBlob(response, f"{digest} from {self.name}", self._metrics.upstream_bytes.labels(self.name))
        finally:
            response.release()

    async def tags(self, repo: str, params: Mapping[str, str], credential: Credential | None) -> UpstreamTags:
        """GET the tag list (or the page ``params`` asks for) within ``MAX_TAG_LIST_BYTES``
        (404: NameUnknown)."""
        response = await self._request("GET", repo, "tags/list", credential, params=params, not_found=NameUnknown)
        try:
            body = await read_capped(response, MAX_TAG_LIST_BYTES, "tag list")
            return UpstreamTags(body, next_page_query(response.headers.get("Link")))
        finally:
            response.release()

    async def referrers(self, repo: str, digest: Digest, artifact_type: str | None,
                        credential: Credential | None) -> UpstreamReferrers:
        """GET the referrers list of ``digest`` within ``MAX_MANIFEST_BYTES`` (404, no referrers
        API: ManifestUnknown)."""
        params = {"artifactType": artifact_type} if artifact_type else None
        response = await self._request("GET", repo, f"referrers/{digest}", credential, params=params,
                                       headers={"Accept": OCI_INDEX})
        try:
            body = await read_capped(response, MAX_MANIFEST_BYTES, "referrers list")
            return UpstreamReferrers(body, response.headers.get("Content-Type", OCI_INDEX),
                                     response.headers.get("OCI-Filters-Applied"))
        finally:
            response.release()

    async def check_credentials(self, repo: str | None, credential: Credential) -> bool:
        """Have upstream verify ``credential``: exchange it for a token (on ``repo``'s pull scope, or
        with no scope for a login) or present it as Basic at ``/v2/``.

        True: upstream accepted it; False: upstream asks for no authentication, so nothing was
        checked; raises Unauthorized if upstream refused it.
        """
        if self.offline:
            return False  # nobody can check it: it neither accepts nor refuses
        scope = pull_scope(repo) if repo else ""
        probe = await self._send("GET", f"{self.base_url}/v2/", "", None, None, None, prefetch=False)
        challenge = parse_challenge(probe.headers.get("WWW-Authenticate"))
        probe.release()
        if probe.status != 401 or challenge is None or challenge.scheme not in ("bearer", "basic"):
            return False
        self._learn(challenge)
        if challenge.scheme == "bearer":
            await self._fetch_token(challenge, scope, credential)
            return True
        answer = await self._send("GET", f"{self.base_url}/v2/", scope, credential, None, None)
        answer.release()
        if answer.status in (401, 403):
            raise Unauthorized("upstream refused the credentials", detail={"upstream": self.name})
        return True

    # internals: requests ---------------------------------------------------------------------
    async def _head(self, repo: str, suffix: str, credential: Credential | None,
                    not_found: type[OCIError], headers: Mapping[str, str] | None) -> UpstreamHead:
        response = await self._request("HEAD", repo, suffix, credential, headers=headers, not_found=not_found)
        response.release()
        return UpstreamHead(response.headers.get("Docker-Content-Digest"), response.content_length)

    async def _request(self, method: str, repo: str, suffix: str, credential: Credential | None, *,
                       headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
                       not_found: type[OCIError] = ManifestUnknown) -> aiohttp.ClientResponse:
        """Send ``METHOD /v2/<repo>/<suffix>``; return a 2xx response or raise a domain error.

        The caller (in this module) owns the returned response and must release it.
        """
        url = f"{self.base_url}/v2/{repo}/{suffix}"
        scope = pull_scope(repo)
        response = await self._send(method, url, scope, credential, headers, params)
        if response.status == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
            response.release()
            if challenge is not None and challenge.scheme in ("bearer", "basic"):
                self._learn(challenge)
                self._tokens.pop((scope, self._cred_key(credential)), None)
                if challenge.scheme == "bearer":
                    await self._fetch_token(challenge, scope, credential)
                response = await self._send(method, url, scope, credential, headers, params)
        if response.status < 300:
            return response
        response.release()
        raise self._translate(response, not_found)

    # internals: auth -------------------------------------------------------------------------
    @staticmethod
    def _cred_key(credential: Credential | None) -> str:
        return credential.id if credential else "-"

    def _learn(self, challenge: Challenge) -> None:
        """Remember what upstream asks for; a Bearer realm Wharf may not use is refused, not kept."""
        if challenge.scheme == "bearer" and not (
                challenge.realm and realm_trusted(challenge.realm, self.base_url, self.config.realm_hosts)):
            self._challenge = None
            raise Unavailable(f"upstream {self.name} sent an untrusted token realm {challenge.realm!r} "
                              f"(neither its own scheme, host and port nor in realm_hosts)")
        self._challenge = challenge

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

    def _wants_token(self, scope: str, credential: Credential | None) -> bool:
        """Upstream asked for Bearer tokens before and we hold none for this scope yet."""
        return (self._challenge is not None and self._challenge.scheme == "bearer"
                and (scope, self._cred_key(credential)) not in self._tokens
                and not (credential and credential.scheme == "bearer"))

    async def _fetch_token(self, challenge: Challenge, scope: str, credential: Credential | None) -> None:
        """Get a Bearer token for ``scope`` from the challenge's (trusted) realm, with the credential
        if any. A token service that answers without a token makes Wharf forget the challenge."""
        if credential is not None and credential.scheme == "bearer":
            return  # the client's own token goes through as it is
        assert challenge.realm is not None  # _learn keeps only challenges with a trusted realm
        params = {"scope": scope} if scope else {}  # no scope: a login, checking the credential only
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        headers = {"Authorization": credential.header()} if credential else {}
        response = await self._exchange("GET", challenge.realm, "TOKEN", params=params, headers=headers,
                                        allow_redirects=True)
        try:
            if response.status in (401, 403):
                raise Unauthorized("upstream refused the credentials", detail={"upstream": self.name})
            if response.status >= 300:
                self._challenge = None
                raise _TokenServiceAnswered(f"token service of {self.name} answered {response.status}")
            try:
                body = await response.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                raise Unavailable(f"token service of {self.name} sent no readable answer") from None
        finally:
            response.release()
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not token:
            self._challenge = None
            raise _TokenServiceAnswered(f"token service of {self.name} sent no token")
        try:
            expires_in = float(body.get("expires_in") or 60)
        except (TypeError, ValueError):
            expires_in = 60.0
        self._tokens[(scope, self._cred_key(credential))] = (
            token, time.monotonic() + max(1.0, expires_in - _TOKEN_MARGIN))

    # internals: sending ----------------------------------------------------------------------
    async def _send(self, method: str, url: str, scope: str, credential: Credential | None,
                    headers: Mapping[str, str] | None, params: Mapping[str, str] | None,
                    prefetch: bool = True) -> aiohttp.ClientResponse:
        """One request (after a token for a new scope, when upstream uses tokens), unless upstream
        is blocked (429) or its circuit is open: then fail at once."""
        await self._adopt_shared_rate()
        if self._rate.blocked():
            self._metrics.upstream_requests.labels(self.name, method, "blocked").inc()
            raise TooManyRequests(f"upstream {self.name} asked us to wait (Retry-After)",
                                  headers={"Retry-After": str(self._rate.retry_after())})
        probe = self._circuit.state == HALF_OPEN
        if not self._circuit.admit():
            self._metrics.upstream_requests.labels(self.name, method, "circuit_open").inc()
            wait = max(1, math.ceil(self._circuit.retry_in()))
            raise Unavailable(f"upstream {self.name} is not answering ({self._circuit.cause}, "
                              f"{self._circuit.failures} times in a row); next try in {wait}s",
                              headers={"Retry-After": str(wait)})
        try:
            if prefetch and self._wants_token(scope, credential):
                assert self._challenge is not None
                try:
                    await self._fetch_token(self._challenge, scope, credential)
                except _TokenServiceAnswered:
                    pass  # forgotten: go without a token and see what upstream says now
            request_headers = dict(headers or {})
            auth = self._auth_header(scope, credential)
            if auth:
                request_headers["Authorization"] = auth
            response = await self._exchange(method, url, method, headers=request_headers, params=params,
                                            allow_redirects=True)
        finally:
            if probe:
                self._circuit.abandoned()  # no-op once the probe has an outcome
        await self._note_rate_limit(response)
        return response

    async def _exchange(self, method: str, url: str, label: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """One HTTP exchange up to its response headers, within ``first_byte_timeout``.

        Failures become Unavailable saying what went wrong, and count against the circuit; any
        answer but a 5xx counts for it. Every request to upstream passes here: an offline
        upstream's is refused before anything is sent.
        """
        if self.offline:
            self._metrics.upstream_requests.labels(self.name, label, "offline").inc()
            raise UpstreamOffline(f"upstream {self.name} is offline (offline: true): Wharf does not contact it")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.first_byte_timeout):
                response = await self._session.request(method, url, timeout=self._timeout, ssl=self._ssl,
                                                       auto_decompress=False, **kwargs)
        except aiohttp.ConnectionTimeoutError:
            outcome, cause = "timeout", f"connect timed out after {self.config.connect_timeout:g}s"
        except aiohttp.SocketTimeoutError:
            outcome, cause = "timeout", f"stalled for {self.config.read_timeout:g}s"
        except asyncio.TimeoutError:
            outcome, cause = "timeout", f"sent no response within {self.config.first_byte_timeout:g}s"
        except (aiohttp.ClientSSLError, aiohttp.ClientConnectorCertificateError) as exc:
            outcome, cause = "error", describe_tls_error(exc)
        except aiohttp.ClientConnectorError as exc:
            outcome, cause = "error", f"unreachable: {exc.os_error.strerror or type(exc.os_error).__name__}"
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, ssl.SSLError):  # TLS 1.3: refused after the handshake
                outcome, cause = "error", describe_tls_error(exc.__cause__)
            else:
                outcome, cause = "error", f"unreachable: {type(exc).__name__}"
        else:
            self._metrics.upstream_requests.labels(self.name, label, str(response.status)).inc()
            self._debug(method, url, label, response.status, started, kwargs, len(response.history))
            if response.status >= 500 and not (response.status == 503 and "retry-after" in response.headers):
                self._circuit_failed(f"answered {response.status}")
            else:
                if self._circuit.state != CLOSED:
                    log.info("upstream %s answers again: circuit closed", self.name)
                self._circuit.succeeded()
            return response
        self._metrics.upstream_requests.labels(self.name, label, outcome).inc()
        self._debug(method, url, label, outcome, started, kwargs)
        self._circuit_failed(cause)
        what = "token service of " if label == "TOKEN" else ""
        raise Unavailable(f"{what}upstream {self.name} {cause}")

    def _debug(self, method: str, url: str, label: str, status: int | str, started: float,
               kwargs: Mapping[str, Any], redirects: int = 0) -> None:
        """A debug line per upstream request: the URL asked (never a redirect's, which may carry a
        signature), status or error, time to headers; never a header. For a token: its realm,
        scope and the kind of credential presented, never the credential or the token."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if label == "TOKEN":
            scope = (kwargs.get("params") or {}).get("scope", "")
            authorization = (kwargs.get("headers") or {}).get("Authorization", "")
            log.debug("token from %s for %s: %s", url, scope or "a login (no scope)", status,
                      extra={"upstream": self.name, "realm": url, "scope": scope,
                             "credential": authorization.split(" ", 1)[0].lower() or None,
                             "status": status, "duration_ms": duration_ms})
            return
        log.debug("upstream %s %s: %s", method, url, status,
                  extra={"upstream": self.name, "method": method, "url": url, "status": status,
                         "redirects": redirects, "duration_ms": duration_ms})

    def _circuit_failed(self, cause: str) -> None:
        if self._circuit.failed(cause):
            self._metrics.upstream_circuit_opened.labels(self.name).inc()
            log.warning("upstream %s: %s (%d times in a row): circuit open, requests fail at once for %gs",
                        self.name, cause, self._circuit.failures, self.config.circuit_cooldown)

    # internals: rate limits ------------------------------------------------------------------
    async def _note_rate_limit(self, response: aiohttp.ClientResponse) -> None:
        """Keep what upstream says of its quota, and tell the other workers."""
        if not self._rate.note(response.status, response.headers):
            return
        self._export_quota()
        if self._shared is not None:
            value, ttl = self._rate.shared()
            await self._shared.set(f"rl:{self.name}", value, ttl)

    async def _adopt_shared_rate(self) -> None:
        """Take what another worker or replica last learned of the quota (a 429 above all)."""
        if self._shared is None:
            return
        shared = await self._shared.get(f"rl:{self.name}")
        if shared:
            self._rate.adopt(shared)
            self._export_quota()

    def _export_quota(self) -> None:
        rate = self.rate
        if rate.limit is not None:
            self._metrics.ratelimit_limit.labels(self.name).set(rate.limit)
        if rate.remaining is not None:
            self._metrics.ratelimit_remaining.labels(self.name).set(rate.remaining)

    def _translate(self, response: aiohttp.ClientResponse, not_found: type[OCIError]) -> OCIError:
        status = response.status
        if status == 401:
            return Unauthorized(f"upstream {self.name} requires authentication")
        if status == 403:
            return Denied(f"upstream {self.name} denied access")
        if status == 404:
            return not_found()
        if status == 429:
            return TooManyRequests(f"upstream {self.name} rate limit reached",
                                   headers={"Retry-After": str(self._rate.retry_after() or 1)})
        return Unavailable(f"upstream {self.name} answered {status}")
