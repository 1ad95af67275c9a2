"""The cache's API for operators: what it holds, purge, warm. Server admins only (what an upstream
repository is cached and how often it is pulled describes the site); errors as GitHub writes them.

    GET  /api/cache/repositories?upstream=U&repo=R   the cached repositories, their tags and sizes
    POST /api/cache/purge   {"ref" | "repo" | "upstream", "older_than": "30d", "dry_run": false}
                            a token with delete:packages
    POST /api/cache/warm    {"images": ["NAME[:TAG]", ...], "platforms": ["linux/amd64", ...]}
                            a token with write:packages; answers when the warm-up is done (it goes on
                            if the caller hangs up); 409 while another warm-up runs

Anonymous callers get 401 with a Basic challenge, signed-in users who are not server admins 403,
an admin's token without the scope 403; a bad query or body 422 naming the field.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from proxy.http.admin_api import ApiError, _body, api_handler, server_admin
from proxy.http.api import paged, paging
from proxy.http.keys import CACHE_CONTROL
from proxy.mirror.sync import SyncBusy
from proxy.registry.access import DELETE_PACKAGES, WRITE_PACKAGES, Principal
from proxy.registry.audit import iso_time
from proxy.registry.packages import InvalidRequest
from proxy.registry.cache_control import CacheControl, CacheRequestInvalid, parse_duration, warm_outcome
from proxy.storage.cache_index import CachedImage, CachedRepository

_RUNNING: set[asyncio.Future] = set()  # warm-ups whose caller hung up: they finish anyway


def _time(epoch: float | None) -> str | None:
    return iso_time(epoch) if epoch else None


def image_json(image: CachedImage) -> dict[str, Any]:
    return {"tag": image.tag, "digest": image.digest, "media_type": image.media_type, "size": image.size,
            "public": image.public, "cached_at": _time(image.cached_at), "last_pulled": _time(image.last_pulled),
            "pulls": image.pulls}


def repository_json(repo: CachedRepository) -> dict[str, Any]:
    return {"name": repo.name, "upstream": repo.upstream, "repository": repo.repo, "size": repo.size,
            "last_pulled": _time(repo.last_pulled), "pulls": sum(t.pulls for t in repo.tags),
            "tags": [image_json(t) for t in repo.tags]}


def _control(request: web.Request) -> CacheControl:
    return request.app[CACHE_CONTROL]  # type: ignore[return-value]


def _needs(principal: Principal, scope: str, what: str) -> None:
    if not principal.may(scope):
        raise ApiError(403, f"the token in use lacks {scope}, which {what} needs")


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError(422, f"{name!r} must be a non-empty string")
    return value


@api_handler
async def cached_repositories(request: web.Request) -> web.Response:
    await server_admin(request)
    query = {name: request.query.get(name) or None for name in ("upstream", "repo")}
    try:
        page, per_page = paging(request)
        repos, total = await _control(request).repositories(query["upstream"], query["repo"],
                                                            (page - 1) * per_page, per_page)
    except (CacheRequestInvalid, InvalidRequest) as exc:
        raise ApiError(422, str(exc)) from None
    return paged(request, {"repositories": [repository_json(r) for r in repos], "total_count": total},
                 total, page, per_page)


@api_handler
async def purge(request: web.Request) -> web.Response:
    caller = await server_admin(request)
    _needs(caller, DELETE_PACKAGES, "a purge")
    body = await _body(request)
    unknown = sorted(set(body) - {"ref", "repo", "upstream", "older_than", "dry_run"})
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r}: a purge takes ref, repo, upstream, older_than, dry_run")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ApiError(422, "'dry_run' must be true or false")
    older = body.get("older_than")
    if isinstance(older, bool) or (older is not None and not isinstance(older, (str, int, float))):
        raise ApiError(422, "'older_than' must be a duration such as \"30d\", \"12h\" or a number of seconds")
    control = _control(request)
    try:
        older_than = parse_duration(str(older)) if older is not None else None
        images = await control.select(_text(body, "ref"), _text(body, "repo"), _text(body, "upstream"), older_than)
    except CacheRequestInvalid as exc:
        raise ApiError(422, str(exc)) from None
    report = await asyncio.shield(control.purge(images, dry_run))  # a caller who hangs up stops nothing half-way
    return web.json_response(report.as_dict())


@api_handler
async def warm(request: web.Request) -> web.Response:
    caller = await server_admin(request)
    _needs(caller, WRITE_PACKAGES, "a warm-up")
    body = await _body(request)
    images, platforms = body.get("images"), body.get("platforms")
    if not isinstance(images, list) or not images or not all(isinstance(i, str) and i for i in images):
        raise ApiError(422, "'images' must be a non-empty list of image names (NAME[:TAG])")
    if len(images) > 1000:
        raise ApiError(422, "'images' may name at most 1000 images")
    if platforms is not None and (not isinstance(platforms, list) or not all(isinstance(p, str) for p in platforms)):
        raise ApiError(422, "'platforms' must be a list of os/architecture[/variant]")
    control = _control(request)
    try:
        warm_list = control.warm_list(images, platforms)
    except CacheRequestInvalid as exc:
        raise ApiError(422, str(exc)) from None
    task = asyncio.ensure_future(control.warm(warm_list))
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    try:
        report = await asyncio.shield(task)
    except SyncBusy as exc:
        raise ApiError(409, str(exc)) from None
    return web.json_response(warm_outcome(report))  # "ok": false and each failure named when one failed


def setup_cache_api(app: web.Application) -> None:
    add = app.router.add_route
    add("GET", "/api/cache/repositories", cached_repositories, name="api_cache_repositories")
    add("POST", "/api/cache/purge", purge, name="api_cache_purge")
    add("POST", "/api/cache/warm", warm, name="api_cache_warm")
