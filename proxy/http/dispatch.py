"""One resource for everything under ``/v2/``, dispatched by the path's shape, not by regexes.

Repository names contain slashes, so the API's routes are told apart from the right:
``<name>/manifests/<ref>``, ``<name>/blobs/<digest>``, ``<name>/blobs/uploads/[<id>]``,
``<name>/tags/list``, ``<name>/referrers/<digest>``, ``_catalog``, and ``/v2/`` itself.
aiohttp would try one regex per route on every request; this reads the path once.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Iterator

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, ResourceRoute, UrlMappingMatchInfo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PREFIX = "/v2/"


class NamedRoute(ResourceRoute):
    """A route whose name (the metrics label) is its kind, not its resource's."""

    def __init__(self, method: str, handler: Handler, resource: AbstractResource, kind: str) -> None:
        super().__init__(method, handler, resource)
        self._kind = kind

    @property
    def name(self) -> str:
        return self._kind


def split_v2_path(path: str) -> tuple[str, dict[str, str]] | None:
    """(kind, match_info) for a ``/v2/...`` path, or None when it is no API path."""
    if path in ("/v2", "/v2/"):
        return "base", {}
    if not path.startswith(_PREFIX):
        return None
    tail = path[len(_PREFIX):]
    if tail == "_catalog":
        return "catalog", {}
    if tail.endswith("/tags/list"):
        name = tail[:-len("/tags/list")]
        return ("tags", {"name": name}) if name else None
    head, sep, rest = tail.rpartition("/blobs/uploads")
    if sep and head:
        if rest in ("", "/"):
            return "upload_start", {"name": head}
        if rest.startswith("/") and "/" not in rest[1:]:
            return "upload", {"name": head, "upload_id": rest[1:]}
    head, _, last = tail.rpartition("/")
    name, _, kind = head.rpartition("/")
    if not name or not last:
        return None
    if kind == "manifests":
        return "manifest", {"name": name, "reference": last}
    if kind == "blobs":
        return "blob", {"name": name, "digest": last}
    if kind == "referrers":
        return "referrers", {"name": name, "digest": last}
    return None


class V2Resource(AbstractResource):
    """Every ``/v2/`` endpoint; ``add(kind, method, handler)`` fills its table."""

    def __init__(self) -> None:
        super().__init__(name=None)
        self._routes: dict[str, dict[str, NamedRoute]] = {}
        self._allowed: dict[str, frozenset[str]] = {}

    def add(self, kind: str, method: str, handler: Handler, name: str | None = None) -> None:
        self._routes.setdefault(kind, {})[method] = NamedRoute(method, handler, self, name or kind)
        self._allowed[kind] = frozenset(self._routes[kind])

    async def resolve(self, request: web.Request):
        found = split_v2_path(request.rel_url.path_safe)
        if found is None:
            return None, set()
        kind, match = found
        routes = self._routes.get(kind)
        if not routes:
            return None, set()
        route = routes.get(request.method)
        if route is None:
            return None, self._allowed[kind]
        return UrlMappingMatchInfo(match, route), self._allowed[kind]

    # the rest of AbstractResource: what aiohttp asks of any resource -----------------------
    @property
    def canonical(self) -> str:
        return "/v2/{path}"

    def url_for(self, **kwargs: str):
        raise NotImplementedError("V2Resource builds no URLs")

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("V2Resource is mounted at /v2/ only")

    def get_info(self) -> dict:
        return {"prefix": _PREFIX}

    def raw_match(self, path: str) -> bool:
        return split_v2_path(path) is not None

    def __len__(self) -> int:
        return sum(len(r) for r in self._routes.values())

    def __iter__(self) -> Iterator[NamedRoute]:
        for routes in self._routes.values():
            yield from routes.values()
