"""Pull handlers: ``/v2/``, manifests, blobs (with Range), tags list, referrers.

Handlers translate HTTP to registry calls and registry results to HTTP; they never know whether
the registry behind them is the local store or the pull-through cache.
"""

from __future__ import annotations

import logging
import os
import re

from aiohttp import web
from prometheus_client import Counter

from proxy.errors import (DigestInvalid, OCIError, PaginationNumberInvalid, RangeInvalid, SizeInvalid, Unauthorized,
                          Unavailable, UpstreamInvalid)
from proxy.http.keys import (API_VERSION, ADDRESSING, BODY_BYTES, CACHE_INDEX, CACHE_STATUS, CAUSE, CONFIG,
                             ERROR_CODE, METRICS, IDENTITY, OUTCOME_STATUS, PACKAGES, REGISTRY, REPLAYS, SENDFILE_POOL,
                             UPSTREAM)
from proxy.http.identity import caller_of
from proxy.http.sendfile import SendfileResponse, direct_socket, send_region
from proxy.oci.digest import Digest, is_digest
from proxy.oci.media import parse_accept
from proxy.registry.base import BlobResult, Client, Target
from proxy.registry.fills import FillFailed

log = logging.getLogger("wharf.http")
_CHUNK = 256 * 1024
_SENDFILE_BATCH = 1024 * 1024  # a follower sends at least this much per sendfile while the fill runs
_RANGE_RE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})", re.ASCII)  # offsets fit an int64
_PAGE_SIZE_RE = re.compile(r"0*([0-9]{1,9})", re.ASCII)


async def client_of(request: web.Request) -> Client:
    """The caller (``proxy.http.identity``): a Wharf account, and/or an upstream credential."""
    return await caller_of(request)


def target_of(request: web.Request) -> Target:
    target = request.app[ADDRESSING].resolve(request.match_info["name"], request.query.get("ns"))
    if target.upstream is not None:
        request[UPSTREAM] = target.upstream  # for the access log
    return target


def _common_headers(request: web.Request) -> dict[str, str]:
    ns = request.query.get("ns")
    return {"OCI-Namespace": ns} if ns else {}


async def base(request: web.Request) -> web.Response:
    """``GET /v2/``: the API version check; without credentials, the challenge to Wharf's ``/token``.

    Like Docker Hub and GHCR, an anonymous ping gets 401: clients learn how to authenticate only
    from this ping (on a 200, docker and the containers/image family — skopeo, podman, buildah —
    never send a login's credentials, and ``login`` accepts any password). Anonymous clients
    fetch an anonymous token at ``/token`` and pull public content with it; containerd does not
    ping at all.
    """
    if "Authorization" not in request.headers:
        raise Unauthorized("Wharf issues tokens at its /token endpoint (anonymous ones too)")
    await caller_of(request)  # a Wharf token that does not stand is refused here already
    return web.json_response({})


async def manifest(request: web.Request) -> web.Response:
    target = target_of(request)
    reference = request.match_info["reference"]
    head = request.method == "HEAD"
    accept = parse_accept(request.headers.getall("Accept", []))
    result = await request.app[REGISTRY].manifest(target, reference, accept, await client_of(request), head)
    request[CACHE_STATUS] = result.cache_status
    on_pull = None
    if target.upstream is not None and not is_digest(reference):  # a cached tag's pull: counted in memory
        note_pull, scope = request.app[CACHE_INDEX].note_pull, target.scope
        note_pull(scope, reference)
        on_pull = lambda: note_pull(scope, reference)  # noqa: E731
    headers = _common_headers(request)
    digest = str(result.digest)
    headers.update({"Content-Type": result.media_type, "Docker-Content-Digest": digest, "ETag": f'"{digest}"',
                    "Docker-Distribution-API-Version": API_VERSION, "Content-Length": str(result.size)})
    reader = None
    if result.readers_until and not result.shared_until:
        authorization = request.headers.get("Authorization")
        if authorization:
            reader = (authorization, request.app[IDENTITY].expiry_of(authorization))
    if (result.shared_until or reader) and result.body is not None and request.app[CONFIG].fast_paths.replay:
        on_hit = None
        if target.upstream is None:  # a pull of a package's version counts as a download, replayed or not
            note_download, repo, digest_now = request.app[PACKAGES].note_download, target.repo, result.digest
            on_hit = lambda: note_download(repo, digest_now)  # noqa: E731
        request.app[REPLAYS].remember(request.raw_path, request.headers.getall("Accept", []), headers, result.body,
                                      result.shared_until or result.readers_until, "manifest",
                                      "manifest" if is_digest(reference) else "tag",
                                      (target.scope, reference), target.upstream, on_hit, reader, on_pull,
                                      result.holds)
    if head:
        return web.Response(status=200, headers=headers)
    return web.Response(status=200, body=result.body, headers=headers)


def parse_range(header: str | None, size: int | None) -> tuple[int, int] | None:
    """A single ``bytes=a-b`` / ``a-`` / ``-n`` range as [start, end); None means the whole blob."""
    if not header or size is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if not match or match.groups() == ("", ""):
        raise RangeInvalid(f"unsupported Range {header[:100]!r}", headers={"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if first == "":
        length = int(last)
        start, end = max(0, size - length), size
    else:
        start = int(first)
        end = min(size, int(last) + 1) if last else size
    if start >= size or start >= end:
        raise RangeInvalid(f"range {header[:100]!r} outside 0-{size}", headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def blob(request: web.Request) -> web.StreamResponse:
    target = target_of(request)
    digest = Digest.parse(request.match_info["digest"])
    head = request.method == "HEAD"
    result = await request.app[REGISTRY].blob(target, digest, await client_of(request), head)
    request[CACHE_STATUS] = result.cache_status
    headers = _common_headers(request)
    headers.update({"Content-Type": result.media_type, "Docker-Content-Digest": str(digest),
                    "ETag": f'"{digest}"', "Accept-Ranges": "bytes"})
    if result.redirect is not None and not head:
        headers["Location"] = result.redirect
        return web.Response(status=307, headers=headers)
    if result.path is not None:
        return await send_stored(request, result, headers)
    if head or result.segments is None:
        if result.size is not None:
            headers["Content-Length"] = str(result.size)
        return web.Response(status=200, headers=headers)
    return await send_growing(request, result, headers)


class _StoredBlobResponse(SendfileResponse):
    """A stored blob, marked as being read while it is sent (eviction skips it)."""

    def __init__(self, result: BlobResult, headers: dict[str, str], on_sent, executor) -> None:
        super().__init__(result.path, executor, chunk_size=1024 * 1024, headers=headers)
        self._result = result
        self._on_sent = on_sent

    async def prepare(self, request: web.BaseRequest):
        if self.prepared:  # aiohttp calls prepare again after the handler; send only once
            return None
        assert self._result.reading is not None
        try:
            with self._result.reading():
                writer = await super().prepare(request)
        except ConnectionError as exc:  # the client went away: count what left before it did
            sent = getattr(exc, "sent", 0)
            self._on_sent(sent)
            request[BODY_BYTES] = sent
            raise
        if request.method != "HEAD":
            sent = 0 if self.status == 304 else self.content_length or 0
            self._on_sent(sent)
            request[BODY_BYTES] = sent
        return writer


def _sendfile_pool(request: web.Request):
    """The threads that send blobs with os.sendfile; None when that fast path is off."""
    return request.app[SENDFILE_POOL] if request.app[CONFIG].fast_paths.sendfile else None


def _closed_by_client(request: web.BaseRequest, exc: ConnectionError) -> None:
    """The client closed the connection (or stopped reading) mid-body: count a 499, end the connection."""
    request[OUTCOME_STATUS] = 499
    request[CAUSE] = "client stopped reading" if "stopped reading" in str(exc) else "client closed the connection"
    if request.transport is not None:
        request.transport.abort()


def _fill_failure(exc: FillFailed) -> OCIError:
    """Why the fill a reader followed failed, as the OCI error it amounts to."""
    cause = exc.__cause__
    if isinstance(cause, DigestInvalid):
        return UpstreamInvalid("upstream sent content that does not match its digest")
    if isinstance(cause, SizeInvalid):
        return UpstreamInvalid(f"upstream sent a body of the wrong size: {cause.message}")
    if isinstance(cause, OCIError):
        return cause
    return Unavailable(f"the download from upstream failed: {cause or exc}")


async def send_stored(request: web.Request, result: BlobResult, headers: dict[str, str],
                      served: Counter | None = None) -> web.StreamResponse:
    """A stored blob goes out with sendfile; aiohttp's FileResponse does Range and HEAD. Its bytes
    count as ``served`` (default: bytes served to clients from the cache).

    It is sent here, not after the middleware, so the request is counted as what it came to.
    """
    if request.headers.get("Range"):
        parse_range(request.headers["Range"], result.size)  # 416 in OCI form for bad ranges
    headers["Docker-Distribution-API-Version"] = API_VERSION
    served = request.app[METRICS].bytes_served.labels("cache") if served is None else served
    response = _StoredBlobResponse(result, headers, served.inc,
                                   _sendfile_pool(request))
    try:
        await response.prepare(request)
    except ConnectionError as exc:
        _closed_by_client(request, exc)
    return response


async def send_growing(request: web.Request, result: BlobResult, headers: dict[str, str],
                       served: Counter | None = None) -> web.StreamResponse:
    """A blob still being filled: stream it as it grows; abort the connection if the fill fails.
    Its bytes count as ``served`` (default: bytes served to clients from upstream).

    An aborted answer is counted as the upstream failure that caused it (502 when upstream sent
    content that does not match its digest); one the client hung up on, as a 499.
    """
    span = parse_range(request.headers.get("Range"), result.size)
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    response.headers["Docker-Distribution-API-Version"] = API_VERSION  # prepared before the middleware sees it
    start, end = span if span else (0, result.size)
    if span:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{result.size}"
    if end is not None:
        response.content_length = end - start
    sent = 0
    served = request.app[METRICS].bytes_served.labels("upstream") if served is None else served
    try:
        writer = await response.prepare(request)
        assert result.segments is not None
        pool = _sendfile_pool(request)
        sock = await direct_socket(request, writer) if end is not None and pool else None  # chunked needs framing
        # bytes are counted as they go out: the figures move during a long download, and are
        # whole by the time the client has the last byte
        async for fd, offset, count in result.segments(start, end, _SENDFILE_BATCH if sock else 0):
            if sock is not None:
                await send_region(request, pool, sock, fd, offset, count)
                sent += count
                served.inc(count)
                continue
            while count > 0:
                chunk = os.pread(fd, min(count, _CHUNK), offset)
                if not chunk:
                    raise FillFailed(f"{result.digest}: temporary file shrank")
                await response.write(chunk)
                offset, count, sent = offset + len(chunk), count - len(chunk), sent + len(chunk)
                served.inc(len(chunk))
        await response.write_eof()
    except FillFailed as exc:
        error = _fill_failure(exc)
        log.warning("fill of %s failed after %d bytes were sent; aborting the connection: %s",
                    result.digest, sent, error.message,
                    extra={"digest": str(result.digest), "bytes": sent, "cause": error.message})
        request[OUTCOME_STATUS], request[ERROR_CODE], request[CAUSE] = error.status, error.code, error.message
        request[CACHE_STATUS] = "aborted"
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError as exc:
        sent += getattr(exc, "sent", 0)
        served.inc(getattr(exc, "sent", 0))
        _closed_by_client(request, exc)
    finally:
        request[BODY_BYTES] = sent
    return response


def _next_link(request: web.Request, query: str) -> str:
    ns = request.query.get("ns")
    suffix = f"&ns={ns}" if ns else ""
    return f'</v2/{request.match_info["name"]}/tags/list?{query}{suffix}>; rel="next"'


def page_size(request: web.Request) -> int | None:
    """The ``n`` query parameter of a paged list: an integer of ASCII digits from 0 to 999,999,999,
    or None when absent (``isdigit`` would take ``²`` and ``①``, which ``int`` refuses)."""
    n_raw = request.query.get("n")
    if n_raw is None:
        return None
    match = _PAGE_SIZE_RE.fullmatch(n_raw)
    if not match:
        raise PaginationNumberInvalid(f"n must be an integer from 0 to 999999999, not {n_raw[:20]!r}")
    return int(match.group(1))


async def tags(request: web.Request) -> web.Response:
    target = target_of(request)
    n = page_size(request)
    page = await request.app[REGISTRY].tags(target, n, request.query.get("last"), await client_of(request))
    request[CACHE_STATUS] = page.cache_status
    headers = _common_headers(request)
    if page.next_query:
        headers["Link"] = _next_link(request, page.next_query)
    return web.Response(body=page.body, content_type="application/json", headers=headers)


async def referrers(request: web.Request) -> web.Response:
    target = target_of(request)
    digest = Digest.parse(request.match_info["digest"])
    artifact_type = request.query.get("artifactType")
    result = await request.app[REGISTRY].referrers(target, digest, artifact_type, await client_of(request))
    request[CACHE_STATUS] = result.cache_status
    headers = _common_headers(request)
    headers["Content-Type"] = result.media_type
    if result.filters_applied:
        headers["OCI-Filters-Applied"] = result.filters_applied
    return web.Response(body=result.body, headers=headers)
