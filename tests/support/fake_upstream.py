"""An in-memory fake registry for the faults a real registry will not produce on demand.

Use the real ``docker-registry`` (``registry_upstream`` fixture) for ordinary behaviour; use
this one when a test needs upstream to answer 429, hang, trickle, cut a body short, serve the
wrong bytes, demand Bearer tokens, or report a pull quota. Every request it receives is
recorded, so a test can assert what upstream saw ("the blob was fetched exactly once").

Start it with the ``fake_upstream`` fixture (``fake = await fake_upstream()``), fill it with
``add_image`` / ``add_manifest`` / ``add_blob``, break it with ``fault(path, Fault(...))``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from .images import Image, ImageIndex, sha256_digest

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
ERROR_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN", 429: "TOOMANYREQUESTS",
               503: "UNAVAILABLE"}
ANY_PATH = "*"


@dataclass
class Fault:
    """What one path does instead of its normal answer. Set only the knobs you need.

    ``status``           answer this status (with an OCI error body and ``headers``), no content;
    ``hang``             accept the request and never answer (until the server shuts down);
    ``delay``            wait this many seconds before answering;
    ``bytes_per_second`` send the normal body at this rate;
    ``truncate_after``   send this many body bytes of a full-length response, then close;
    ``content``          send these bytes instead, with the headers (digest) of the real ones;
    ``methods``          the methods the fault applies to;
    ``times``            apply to this many matching requests, then behave normally again.
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    delay: float = 0.0
    bytes_per_second: int | None = None
    truncate_after: int | None = None
    content: bytes | None = None
    methods: tuple[str, ...] = ("GET", "HEAD")
    times: int | None = None


FAULT_KEY = web.RequestKey("fault", Fault) if hasattr(web, "RequestKey") else "fault"


def rate_limited(retry_after: int = 30, limit: int = 100, window: int = 21600) -> Fault:
    """Docker Hub's 429: ``Retry-After`` plus ``ratelimit-limit`` / ``ratelimit-remaining: 0``."""
    return Fault(status=429, headers={"Retry-After": str(retry_after),
                                      "ratelimit-limit": f"{limit};w={window}",
                                      "ratelimit-remaining": f"0;w={window}"})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: MultiDict[str]
    headers: CIMultiDictProxy[str]


@dataclass
class RateLimit:
    """A pull quota reported on manifest responses; manifest GETs spend it, HEADs do not."""

    limit: int
    remaining: int
    window: int = 21600
    enforce: bool = True  # answer 429 to a manifest GET once nothing remains

    def headers(self) -> dict[str, str]:
        return {"ratelimit-limit": f"{self.limit};w={self.window}",
                "ratelimit-remaining": f"{self.remaining};w={self.window}"}


@dataclass
class BearerAuth:
    """Token auth like Docker Hub / GHCR: challenge, ``/token`` with Basic credentials, scopes.

    Valid credentials get pull on every repository; anonymous callers (when allowed) get pull
    on public repositories only, so their token is refused (401) on a private one.
    """

    users: dict[str, str]
    private_repos: set[str]
    token_ttl: int = 300
    allow_anonymous: bool = True
    tokens: dict[str, tuple[frozenset[str], float]] = field(default_factory=dict)

    def check_basic(self, header: str | None) -> str | None | bool:
        """The user name for valid Basic credentials, None for none, False for wrong ones."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user if self.users.get(user) == password else False

    def issue(self, user: str | None, scopes: list[str]) -> str:
        """A token granting pull on the requested repos this caller may read."""
        repos = set()
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and "pull" in actions.split(","):
                if user is not None or name not in self.private_repos:
                    repos.add(name)
        token = secrets.token_urlsafe(16)
        self.tokens[token] = (frozenset(repos), time.monotonic() + self.token_ttl)
        return token

    def allows(self, header: str | None, repo: str | None) -> bool:
        """A live Bearer token that covers ``repo`` (any live token for ``/v2/`` itself)."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            return False
        repos, expires = self.tokens[token]
        return time.monotonic() < expires and (repo is None or repo in repos)


def _error(status: int, code: str | None = None, message: str = "",
           headers: dict[str, str] | None = None, head: bool = False) -> web.Response:
    """An OCI error response (no body for HEAD, as registries do)."""
    code = code or ERROR_CODES.get(status, "UNKNOWN")
    body = None if head else json.dumps(
        {"errors": [{"code": code, "message": message or code.lower(), "detail": None}]})
    return web.Response(status=status, text=body, content_type="application/json",
                        headers={**API_HEADERS, **(headers or {})})


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """``bytes=a-b``, ``bytes=a-``, ``bytes=-n`` to (start, end exclusive); None: no range;
    False: unsatisfiable or not understood (multi-range is not supported)."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return False
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start, end = int(first), (min(size, int(last) + 1) if last else size)
    except ValueError:
        return False
    return (start, end) if start < end and start < size else False


class FakeRegistry:
    """The fake: content per repository, faults per path, and a log of every request."""

    def __init__(self) -> None:
        self.url = ""  # set by the fixture once the server listens
        self.manifests: dict[str, dict[str, tuple[bytes, str]]] = {}  # repo -> digest -> content
        self.tags: dict[str, dict[str, str]] = {}  # repo -> tag -> digest
        self.blobs: dict[str, dict[str, bytes]] = {}  # repo -> digest -> bytes
        self.faults: dict[str, Fault] = {}
        self.requests: list[RecordedRequest] = []
        self.bearer: BearerAuth | None = None
        self.ratelimit: RateLimit | None = None
        self.realm: str | None = None  # advertise another token realm (e.g. on a foreign host)
        self.redirect_blobs = False  # blob GETs answer 307 to /_storage/<digest>, like S3/GCS
        self._shutting_down = asyncio.Event()
        self.app = self._make_app()

    # --- content -----------------------------------------------------------------------

    def add_blob(self, repo: str, data: bytes) -> str:
        digest = sha256_digest(data)
        self.blobs.setdefault(repo, {})[digest] = data
        return digest

    def add_manifest(self, repo: str, data: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha256_digest(data)
        self.manifests.setdefault(repo, {})[digest] = (data, media_type)
        if tag is not None:
            self.tags.setdefault(repo, {})[tag] = digest
        return digest

    def add_image(self, repo: str, image: Image | ImageIndex, tag: str | None = "latest") -> str:
        """Store every manifest and blob of ``image``; point ``tag`` at its top manifest."""
        for data in image.blobs.values():
            self.add_blob(repo, data)
        for data, media_type in image.manifests.values():
            self.add_manifest(repo, data, media_type)
        return self.add_manifest(repo, image.manifest, image.media_type, tag)

    # --- knobs -------------------------------------------------------------------------

    def fault(self, path: str, fault: Fault) -> None:
        """Break ``path`` (exact request path, or ``ANY_PATH`` for every request)."""
        self.faults[path] = fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def require_bearer(self, users: dict[str, str] | None = None, private: set[str] | None = None,
                       token_ttl: int = 300, allow_anonymous: bool = True) -> BearerAuth:
        """Turn on token auth; ``private`` repos need a token obtained with ``users`` credentials."""
        self.bearer = BearerAuth(dict(users or {}), set(private or ()), token_ttl, allow_anonymous)
        return self.bearer

    def set_ratelimit(self, limit: int = 100, remaining: int | None = None, window: int = 21600,
                      enforce: bool = True) -> RateLimit:
        """Report a quota on manifest responses; each manifest GET spends one pull."""
        self.ratelimit = RateLimit(limit, limit if remaining is None else remaining, window, enforce)
        return self.ratelimit

    # --- what upstream saw -------------------------------------------------------------

    @staticmethod
    def manifest_path(repo: str, reference: str) -> str:
        return f"/v2/{repo}/manifests/{reference}"

    @staticmethod
    def blob_path(repo: str, digest: str) -> str:
        return f"/v2/{repo}/blobs/{digest}"

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, filtered by method and exact path when given."""
        return [r for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path == path)]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        return len(self.calls(method, path))

    def reset_counts(self) -> None:
        self.requests.clear()

    # --- server ------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record, self._inject, self._authorize])
        app.router.add_get("/v2/", self._ping)
        app.router.add_get("/token", self._token)
        app.router.add_get("/v2/{name:.+}/tags/list", self._tags_list)
        app.router.add_get("/v2/{name:.+}/manifests/{reference}", self._manifest)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_get("/_storage/{digest}", self._storage)
        app.on_shutdown.append(self._release_hangs)
        return app

    async def _release_hangs(self, _app: web.Application) -> None:
        self._shutting_down.set()

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[..., Awaitable]) -> web.StreamResponse:
        """Every request is logged before anything else can answer it."""
        self.requests.append(RecordedRequest(request.method, request.path,
                                             request.query.copy(), CIMultiDictProxy(CIMultiDict(request.headers))))
        return await handler(request)

    def _take_fault(self, request: web.Request) -> Fault | None:
        """The fault for this path and method, spending one of its ``times``."""
        fault = self.faults.get(request.path) or self.faults.get(ANY_PATH)
        if fault is None or request.method not in fault.methods:
            return None
        if fault.times is not None:
            if fault.times <= 0:
                return None
            fault.times -= 1
        return fault

    @web.middleware
    async def _inject(self, request: web.Request, handler: Callable[..., Awaitable]) -> web.StreamResponse:
        """Status and hang faults answer before auth; body faults ride along to the handler."""
        fault = self._take_fault(request)
        request[FAULT_KEY] = fault
        if fault and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault and fault.hang:
            await self._shutting_down.wait()
            return _error(503, head=request.method == "HEAD")
        if fault and fault.status is not None:
            return _error(fault.status, headers=fault.headers, head=request.method == "HEAD")
        return await handler(request)

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Callable[..., Awaitable]) -> web.StreamResponse:
        """With Bearer auth on, ``/v2/…`` needs a live token covering the repository."""
        if self.bearer is None or not request.path.startswith("/v2/"):
            return await handler(request)
        repo = request.match_info.get("name")
        if self.bearer.allows(request.headers.get("Authorization"), repo):
            return await handler(request)
        realm = self.realm or f"{request.scheme}://{request.host}/token"
        challenge = f'Bearer realm="{realm}",service="fake"'
        if repo is not None:
            challenge += f',scope="repository:{repo}:pull"'
        return _error(401, message="authentication required", head=request.method == "HEAD",
                      headers={"WWW-Authenticate": challenge})

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({}, headers=API_HEADERS)

    async def _token(self, request: web.Request) -> web.Response:
        """Issue a token for the requested scopes; wrong credentials or refused anonymity: 401."""
        assert self.bearer is not None, "token endpoint used without require_bearer()"
        user = self.bearer.check_basic(request.headers.get("Authorization"))
        if user is False or (user is None and not self.bearer.allow_anonymous):
            return web.json_response({"details": "incorrect username or password"}, status=401)
        token = self.bearer.issue(user, request.query.getall("scope", []))
        return web.json_response({"token": token, "access_token": token,
                                  "expires_in": self.bearer.token_ttl,
                                  "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    async def _tags_list(self, request: web.Request) -> web.Response:
        """Sorted tags, paginated with ``n`` and ``last`` and a ``Link`` header."""
        repo = request.match_info["name"]
        if repo not in self.tags:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
        tags = sorted(t for t in self.tags[repo] if t > request.query.get("last", ""))
        headers = dict(API_HEADERS)
        if "n" in request.query and len(tags) > int(request.query["n"]):
            tags = tags[: int(request.query["n"])]
            headers["Link"] = f'</v2/{repo}/tags/list?n={request.query["n"]}&last={tags[-1]}>; rel="next"'
        return web.json_response({"name": repo, "tags": tags}, headers=headers)

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        """By tag or digest, exactly the stored bytes and media type; quota headers if set."""
        repo, reference = request.match_info["name"], request.match_info["reference"]
        head = request.method == "HEAD"
        quota = {}
        if self.ratelimit is not None:
            if not head and self.ratelimit.enforce and self.ratelimit.remaining <= 0:
                return _error(429, headers={**self.ratelimit.headers(), "Retry-After": "60"})
            if not head:
                self.ratelimit.remaining = max(0, self.ratelimit.remaining - 1)
            quota = self.ratelimit.headers()
        digest = self.tags.get(repo, {}).get(reference, reference)
        found = self.manifests.get(repo, {}).get(digest)
        if found is None:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown", quota, head)
        data, media_type = found
        return await self._send(request, data, {"Content-Type": media_type,
                                                "Docker-Content-Digest": digest, **quota})

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        repo, digest = request.match_info["name"], request.match_info["digest"]
        data = self.blobs.get(repo, {}).get(digest)
        if data is None:
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry", head=request.method == "HEAD")
        if self.redirect_blobs and request.method == "GET":
            raise web.HTTPTemporaryRedirect(f"/_storage/{digest}", headers=API_HEADERS)
        return await self._send(request, data, {"Content-Type": "application/octet-stream",
                                                "Docker-Content-Digest": digest})

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        """The redirect target: any repo's blob by digest, no auth (a pre-signed URL)."""
        digest = request.match_info["digest"]
        for blobs in self.blobs.values():
            if digest in blobs:
                return await self._send(request, blobs[digest], {"Content-Type": "application/octet-stream"})
        return _error(404, "BLOB_UNKNOWN")

    async def _send(self, request: web.Request, data: bytes, headers: dict[str, str]) -> web.StreamResponse:
        """Serve ``data`` (or a Range of it) applying this request's body faults."""
        fault: Fault | None = request.get(FAULT_KEY)
        if fault and fault.content is not None:
            data = fault.content
        headers = {**API_HEADERS, **headers, "Accept-Ranges": "bytes"}
        status, span = 200, _parse_range(request.headers.get("Range"), len(data))
        if span is False:
            return _error(416, "RANGE_INVALID", headers={"Content-Range": f"bytes */{len(data)}"},
                          head=request.method == "HEAD")
        if span:
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            status, data = 206, data[start:end]
        headers["Content-Length"] = str(len(data))
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if fault and fault.truncate_after is not None:
            await self._trickle(response, data[: fault.truncate_after], fault.bytes_per_second)
            assert request.transport is not None
            request.transport.close()  # Content-Length promised more: the client sees a cut body
            return response
        await self._trickle(response, data, fault.bytes_per_second if fault else None)
        await response.write_eof()
        return response

    @staticmethod
    async def _trickle(response: web.StreamResponse, data: bytes, rate: int | None) -> None:
        """Write ``data`` at once, or in tenth-of-a-second chunks at ``rate`` bytes per second."""
        if not rate:
            await response.write(data)
            return
        chunk = max(1, rate // 10)
        for offset in range(0, len(data), chunk):
            await response.write(data[offset: offset + chunk])
            await asyncio.sleep(chunk / rate)
