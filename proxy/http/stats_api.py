"""``GET /api/cache/stats``: how the cache is doing, now and over the last hours (the /cache page's data).

    {"generated_at", "history_hours", "sample_seconds",
     "totals": figures since the history began, "window": figures over the history kept ("since"),
     "store": {"cached_bytes", "pushed_bytes", "kept_bytes", "budget_bytes", "budget_used"},
     "upstreams": [{"name", "limit", "remaining", "resets_at", "blocked_until", "circuit"}],
     "fills": [{"upstream", "repository", "digest", "bytes", "size", "started_at", "hidden"}],
     "evictions": [{"digest", "size", "at", "repositories", "hidden"}],
     "largest": [image], "most_pulled": [image],
     "history": [{"at", "hits", "misses", "bytes_from_cache", ..., "cached_bytes", "budget_bytes"}]}

With several workers (or replicas) on one store, any of them answers alike: the counters are every
live worker's (``CacheHistory``), the fills are every fill led on the store (``FillGroup.in_flight``),
the evictions and the store's totals are the store's, a quota is the newest reading any worker or
replica shared; only the circuit is the answering worker's own (each keeps its own).

Figures are ``proxy.registry.history.figures``: hits, misses, hit ratio, bytes served from the cache
and from upstream, upstream requests sent and saved, evictions. Times are seconds since the epoch.

Rules (who sees what):
- the figures, the store, the quotas and the counts are for everyone, anonymous callers too;
- image names (largest and most pulled images, fills in flight, recent evictions) only where the
  caller may pull them: cached upstream content learned without a client's credential (public);
  server admins see all. Local packages are not cached content: none of these lists names one;
- a fill or an eviction the caller may not see stays in the list, its size and progress shown,
  its names and digest not (``hidden``); images the caller may not see are left out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from proxy.http.admin_api import api_handler
from proxy.http.identity import caller_of
from proxy.http.keys import CACHE_HISTORY, CACHE_INDEX, CONFIG, REGISTRY, UPSTREAMS
from proxy.registry.access import Principal
from proxy.registry.cache_control import may_list_cached
from proxy.registry.history import difference, figures

TOP = 10  # images per list
_POINT_FIELDS = ("hits", "misses", "bytes_from_cache", "bytes_from_upstream", "upstream_requests",
                 "upstream_requests_saved", "evictions", "evicted_bytes")


async def cache_stats(app: web.Application, principal: Principal) -> dict[str, Any]:
    """The dashboard's data as ``principal`` may see it (the API and the /cache page)."""
    history = app[CACHE_HISTORY]
    config = app[CONFIG].web
    now, samples, evictions, fills = await asyncio.gather(
        history.current(), history.samples(), history.evictions(),
        asyncio.to_thread(app[REGISTRY].fills.in_flight))
    # names of publicly cached content: for whoever may pull through Wharf (access.pull_through)
    public_names = may_list_cached(principal, app[CONFIG].access.pull_through)
    oldest = samples[0] if samples else now
    window = {"since": oldest["at"], **figures(difference(now["counters"], oldest["counters"]))}
    return {
        "generated_at": now["at"], "history_hours": config.history_hours, "sample_seconds": history.sample_seconds,
        "totals": figures(now["counters"]), "window": window,
        "store": _store(now["store"]),
        "upstreams": [await _upstream(name, upstream) for name, upstream in sorted(app[UPSTREAMS].items())],
        "fills": [_fill(fill, principal, public_names) for fill in fills],
        "evictions": [_eviction(entry, principal, public_names) for entry in evictions],
        "largest": await _top(app, "size", principal, public_names),
        "most_pulled": await _top(app, "pulls", principal, public_names),
        "history": [_point(sample) for sample in [*samples, now]],
    }


def _store(store: dict[str, int]) -> dict[str, Any]:
    budget = store.get("budget_bytes") or 0
    return {**store, "budget_used": round(store.get("cached_bytes", 0) / budget, 4) if budget else None}


def _point(sample: dict) -> dict[str, Any]:
    """One point of the charts: cumulative figures, the store's size and budget."""
    shown = figures(sample["counters"])
    return {"at": sample["at"], **{name: shown[name] for name in _POINT_FIELDS},
            "cached_bytes": sample["store"].get("cached_bytes", 0),
            "budget_bytes": sample["store"].get("budget_bytes", 0)}


async def _upstream(name: str, upstream) -> dict[str, Any]:
    """An upstream's quota (as it last said; ``resets_at``: when that reading's window ends),
    its back-off, and this process's circuit to it."""
    rate = await upstream.quota()
    known = rate.limit is not None or rate.remaining is not None
    return {"name": name, "limit": rate.limit, "remaining": rate.remaining,
            "resets_at": rate.expires_at if known else None,
            "blocked_until": rate.blocked_until if rate.blocked() else None,
            "circuit": upstream.circuit_state}


def _fill(fill: dict, principal: Principal, public_names: bool) -> dict[str, Any]:
    """A fill in flight: its names only for admins and, to those who may pull through Wharf,
    fills asked without a client's credential."""
    shown = principal.admin or (public_names and bool(fill.get("public")))
    return {"upstream": fill.get("upstream"), "repository": fill.get("repository") if shown else None,
            "digest": fill.get("digest") if shown else None, "bytes": int(fill.get("bytes") or 0),
            "size": fill.get("size"), "started_at": fill.get("started_at"), "hidden": not shown}


def _eviction(entry: dict, principal: Principal, public_names: bool) -> dict[str, Any]:
    """An evicted blob: its repositories for admins; for others only when it was confirmed without
    a client's credential in one repository alone (with several, which of them is public is unknown)."""
    repositories = list(entry.get("repositories") or [])
    shown = principal.admin or (public_names and bool(entry.get("public")) and len(repositories) == 1
                                and not repositories[0].startswith("/"))  # never a local package's
    return {"digest": entry.get("digest") if shown else None, "size": int(entry.get("size") or 0),
            "at": entry.get("at"), "repositories": repositories if shown else [], "hidden": not shown}


def _may_pull(principal: Principal, image, public_names: bool) -> bool:
    """A cached image's name is shown to admins, and to others when it was cached without a client's
    credential. (The index holds cached upstream tags only: local packages are not cached content,
    so no package name is ever listed here.)"""
    return principal.admin or (public_names and bool(image.public))


async def _top(app: web.Application, by: str, principal: Principal, public_names: bool) -> list[dict[str, Any]]:
    """The largest or most pulled cached images the caller may pull (the cache index's, when wired)."""
    index = app.get(CACHE_INDEX)
    if index is None:
        return []
    shown = []
    for image in await index.top(by, TOP * 5):
        if _may_pull(principal, image, public_names):
            shown.append({"upstream": image.upstream, "repository": image.repo, "tag": image.tag,
                          "digest": str(image.digest), "size": image.size, "pulls": image.pulls,
                          "last_pulled": image.last_pulled})
            if len(shown) == TOP:
                break
    return shown


@api_handler
async def stats(request: web.Request) -> web.Response:
    """The cache's figures, history and lists; names as the caller may see them."""
    principal = (await caller_of(request)).principal
    return web.json_response(await cache_stats(request.app, principal))


def setup_stats_api(app: web.Application) -> None:
    app.router.add_route("GET", "/api/cache/stats", stats, name="api_cache_stats")
