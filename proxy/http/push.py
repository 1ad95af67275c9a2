"""Push and manage handlers: blob uploads, manifest PUT/DELETE, blob DELETE, ``_catalog``.

Request bodies are never read whole: blob chunks stream from ``request.content`` into the
registry (chunked transfer encoding included), manifests are read up to the size limit only.

A push names a local repository unless the name explicitly addresses an upstream (a configured
upstream as the first path component, or ``?ns=``); those targets go to the registry as they are,
and the registry refuses them with DENIED. With a default upstream, only names under a declared
local namespace can be pushed (``proxy.registry.addressing``); others are DENIED, saying how.
"""

from __future__ import annotations

import re

from aiohttp import web

from proxy.errors import (BlobUploadInvalid, DigestInvalid, ManifestTooLarge, NameInvalid, NameUnknown,
                          RangeInvalid)
from proxy.http.keys import ADDRESSING, CACHE_INDEX, CONFIG, REGISTRY
from proxy.http.pull import client_of, page_size
from proxy.oci.digest import Digest
from proxy.oci.media import MAX_MANIFEST_BYTES
from proxy.registry.base import Chunk, Target, UploadState
from proxy.registry.cache_control import cached_catalog

_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})(?:/(?:[0-9]{1,19}|\*))?", re.ASCII)


def push_target(request: web.Request) -> Target:
    """Where a push or delete lands (``Addressing.push_target`` says which names may be pushed)."""
    return request.app[ADDRESSING].push_target(request.match_info["name"], request.query.get("ns"))


def _upload_location(request: web.Request, upload_id: str) -> str:
    return f"/v2/{request.match_info['name']}/blobs/uploads/{upload_id}"


def _upload_headers(request: web.Request, state: UploadState) -> dict[str, str]:
    return {"Location": _upload_location(request, state.id), "Range": f"0-{max(state.offset - 1, 0)}",
            "Docker-Upload-UUID": state.id, "Content-Length": "0"}


def _blob_created(request: web.Request, digest: Digest) -> web.Response:
    return web.Response(status=201, headers={
        "Location": f"/v2/{request.match_info['name']}/blobs/{digest}",
        "Docker-Content-Digest": str(digest), "Content-Length": "0"})


def _chunk(request: web.Request) -> Chunk:
    """The request body as a chunk: its bytes as they arrive, and its declared start and length."""
    length = request.content_length
    start = None
    header = request.headers.get("Content-Range")
    if header:
        match = _CONTENT_RANGE_RE.fullmatch(header.strip())
        if not match:
            raise BlobUploadInvalid(f"malformed Content-Range {header[:100]!r}; expected <start>-<end>")
        start, end = int(match.group(1)), int(match.group(2))
        if end < start:
            raise RangeInvalid(f"Content-Range {header[:100]!r} ends before it starts")
        if length is not None and length != end - start + 1:
            raise BlobUploadInvalid(f"Content-Range {header[:100]!r} does not match Content-Length {length}")
        length = end - start + 1
    return Chunk(request.content.iter_any(), start, length)


def _has_body(request: web.Request) -> bool:
    return bool(request.content_length) or "Content-Range" in request.headers or (
        request.content_length is None and request.body_exists)


def _upload_id(request: web.Request) -> str:
    return request.match_info["upload_id"]


async def _with_location(request: web.Request, coro):
    """Failures of an upload step still tell the client where its session is (it may resume)."""
    try:
        return await coro
    except RangeInvalid as error:
        error.headers.setdefault("Location", _upload_location(request, _upload_id(request)))
        error.headers.setdefault("Docker-Upload-UUID", _upload_id(request))
        raise


def _mount_source(request: web.Request) -> tuple[bool, Target | None]:
    """(usable, source): no ``from`` is an anonymous mount; an unusable ``from`` means upload instead."""
    name = request.query.get("from")
    if name is None:
        return True, None
    try:
        return True, request.app[ADDRESSING].resolve(name, None)
    except (NameInvalid, NameUnknown):
        return False, None


# blob uploads ------------------------------------------------------------------------------------
async def start_upload(request: web.Request) -> web.Response:
    """``POST /v2/<name>/blobs/uploads/``: mount, monolithic upload (``?digest=``), or a new session."""
    target = push_target(request)
    client = await client_of(request)
    registry = request.app[REGISTRY]
    mount = request.query.get("mount")
    if mount is not None:
        digest = Digest.parse(mount)
        usable, source = _mount_source(request)
        if usable and await registry.mount_blob(target, digest, source, client):
            return _blob_created(request, digest)
    digest_param = request.query.get("digest")
    digest = Digest.parse(digest_param) if digest_param is not None else None
    algorithm = digest.algorithm if digest else request.query.get("digest-algorithm", "sha256")
    state = await registry.start_upload(target, algorithm, client)
    if digest is None:
        return web.Response(status=202, headers=_upload_headers(request, state))
    await registry.finish_upload(target, state.id, digest, _chunk(request), client)
    return _blob_created(request, digest)


async def upload_chunk(request: web.Request) -> web.Response:
    """``PATCH``: append a chunk (``Content-Range`` optional; chunked bodies as dockerd sends them)."""
    target = push_target(request)
    state = await _with_location(request, request.app[REGISTRY].upload_chunk(
        target, _upload_id(request), _chunk(request), await client_of(request)))
    return web.Response(status=202, headers=_upload_headers(request, state))


async def finish_upload(request: web.Request) -> web.Response:
    """``PUT ?digest=``: the optional last chunk, then verify and commit."""
    target = push_target(request)
    raw = request.query.get("digest")
    if not raw:
        raise DigestInvalid("the digest query parameter is required to finish an upload")
    digest = Digest.parse(raw)
    chunk = _chunk(request) if _has_body(request) else None
    await _with_location(request, request.app[REGISTRY].finish_upload(
        target, _upload_id(request), digest, chunk, await client_of(request)))
    return _blob_created(request, digest)


async def upload_status(request: web.Request) -> web.Response:
    """``GET``: how much of the upload arrived (to resume after an error)."""
    target = push_target(request)
    state = await request.app[REGISTRY].upload_status(target, _upload_id(request), await client_of(request))
    return web.Response(status=204, headers=_upload_headers(request, state))


async def cancel_upload(request: web.Request) -> web.Response:
    target = push_target(request)
    await request.app[REGISTRY].cancel_upload(target, _upload_id(request), await client_of(request))
    return web.Response(status=204, headers={"Content-Length": "0"})


# manifests and deletes ---------------------------------------------------------------------------
async def _read_manifest(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_MANIFEST_BYTES:
        raise ManifestTooLarge(f"a manifest may be at most {MAX_MANIFEST_BYTES} bytes")
    parts, total = [], 0
    async for data in request.content.iter_any():
        total += len(data)
        if total > MAX_MANIFEST_BYTES:
            raise ManifestTooLarge(f"a manifest may be at most {MAX_MANIFEST_BYTES} bytes")
        parts.append(data)
    return b"".join(parts)


async def put_manifest(request: web.Request) -> web.Response:
    target = push_target(request)
    reference = request.match_info["reference"]
    body = await _read_manifest(request)
    extra_tags = request.query.getall("tag", [])
    pushed = await request.app[REGISTRY].put_manifest(target, reference, body, request.headers.get("Content-Type"),
                                                      extra_tags, await client_of(request))
    response = web.Response(status=201, headers={
        "Location": f"/v2/{request.match_info['name']}/manifests/{pushed.digest}",
        "Docker-Content-Digest": str(pushed.digest), "Content-Length": "0"})
    if pushed.subject is not None:
        response.headers["OCI-Subject"] = str(pushed.subject)
    if extra_tags:
        for tag in pushed.tags:
            response.headers.add("OCI-Tag", tag)
    return response


async def delete_manifest(request: web.Request) -> web.Response:
    target = push_target(request)
    await request.app[REGISTRY].delete_manifest(target, request.match_info["reference"], await client_of(request))
    return web.Response(status=202, headers={"Content-Length": "0"})


async def delete_blob(request: web.Request) -> web.Response:
    target = push_target(request)
    digest = Digest.parse(request.match_info["digest"])
    await request.app[REGISTRY].delete_blob(target, digest, await client_of(request))
    return web.Response(status=202, headers={"Content-Length": "0"})


async def catalog(request: web.Request) -> web.Response:
    """``GET /v2/_catalog``: the local repositories the caller may read and the cached upstream
    repositories it may pull (``cache_control.cached_catalog``), paged with ``n`` / ``last`` and ``Link``."""
    n = page_size(request)
    last = request.query.get("last")
    client = await client_of(request)
    local = await request.app[REGISTRY].catalog(n, last, client)
    page = await cached_catalog(request.app[CACHE_INDEX], local, client.principal,
                                request.app[CONFIG].access.pull_through, n, last)
    headers = {}
    if page.next_query:
        headers["Link"] = f'</v2/_catalog?{page.next_query}>; rel="next"'
    return web.json_response({"repositories": page.repositories}, headers=headers)



