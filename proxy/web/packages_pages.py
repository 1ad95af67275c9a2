"""The packages pages: ``/packages`` (search, filter, most recently updated first), each package at
its API ``html_url`` (``/packages/{namespace}/{name}``, the name may hold ``/``), its versions
(``…/versions``) and each version (``…/versions/{id}``), with the forms that delete and restore a
version and change the package's visibility.

Rules: the pages ask ``proxy.registry.packages.Packages`` with the viewer's principal, so they show
exactly what the API shows that principal: anonymous visitors see public packages only, a package
the viewer may not read is the 404 page on every page, in search results and in counts. Forms are
offered to those ``access`` allows (the service decides again on POST); deleted versions are
listed for those who may restore them.
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import quote, urlencode

from aiohttp import web

from proxy.http.admin_api import access_changed
from proxy.http.keys import DATABASE, PACKAGES
from proxy.registry.access import VISIBILITIES, Action, Principal
from proxy.registry.packages import PackageView, VersionView
from proxy.web.errors import PageError
from proxy.web.render import page, registry_host, see_other
from proxy.web.sessions import posted_form, viewer_of

PER_PAGE = 30
VERSIONS_SHOWN = 100  # versions read for a package's page (its tags); the versions page pages the rest
_MAX_ID = 2**63 - 1


def package_path(package: PackageView) -> str:
    """The package's page: its API ``html_url`` without the base."""
    return f"/packages/{quote(package.namespace, safe='')}/{quote(package.name, safe='/')}"


def _page_number(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise PageError(422, "page must be a number from 1.")
    return int(raw)


def _version_id(request: web.Request) -> int:
    raw = request.match_info["version_id"]
    if not 1 <= int(raw) <= _MAX_ID:
        raise PageError(404, "There is no such version.")
    return int(raw)


async def _address(request: web.Request) -> tuple[str, str, str]:
    """(``users`` | ``orgs``, owner, name) of the package the path names, as the service takes them."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    packages = request.app[PACKAGES]
    facts = await request.app[DATABASE].run(packages.namespace_facts, namespace)
    return ("orgs" if facts.kind == "org" else "users"), namespace, name


def _pull(host: str, repository: str, reference: str) -> str:
    separator = "@" if ":" in reference else ":"
    return f"docker pull {host}/{repository}{separator}{reference}"


# /packages ----------------------------------------------------------------------------------------
async def packages(request: web.Request) -> web.Response:
    viewer = await viewer_of(request)
    text = request.query.get("q", "").strip()[:200]
    owner = request.query.get("owner", "").strip()[:255] or None
    visibility = request.query.get("visibility", "") or None
    if visibility is not None and visibility not in VISIBILITIES:
        raise PageError(422, f"visibility must be one of {', '.join(VISIBILITIES)}.")
    number = _page_number(request)
    found = await request.app[PACKAGES].search(viewer, text or None, owner, visibility, number, PER_PAGE)
    last = max(1, -(-found.total // PER_PAGE))
    kept = {k: v for k, v in (("q", text), ("owner", owner), ("visibility", visibility)) if v}

    def page_link(n: int) -> str:
        return "/packages?" + urlencode({**kept, "page": n})

    return await page(request, "packages.html", {
        "packages": [(p, package_path(p)) for p in found.items], "total": found.total, "owners": found.owners,
        "q": text, "owner": owner or "", "visibility": visibility or "", "visibilities": VISIBILITIES,
        "page": number, "last": last, "prev_link": page_link(number - 1) if number > 1 else None,
        "next_link": page_link(number + 1) if number < last else None})


# a package ------------------------------------------------------------------------------------------
def _tags(versions: Iterable[VersionView]) -> list[tuple[str, VersionView]]:
    """(tag, version) for every tag the versions hold, the most recently pushed first."""
    rows = [(tag, v) for v in versions for tag in v.tags]
    return sorted(rows, key=lambda row: (-row[1].updated_at, row[0]))


async def package(request: web.Request) -> web.Response:
    viewer = await viewer_of(request)
    address = await _address(request)
    service = request.app[PACKAGES]
    found = await service.get_package(viewer, *address)
    acts = await service.acts(viewer, *address)
    versions = await service.list_versions(viewer, *address, "active", 1, VERSIONS_SHOWN)
    tags = _tags(versions.items)
    stored = await service.referrers(viewer, *address, [v.digest for v in versions.items])
    referrers = [(v, r) for v in versions.items for r in stored.get(v.digest, ())]
    host = registry_host(request)
    featured = next((row for row in tags if row[0] == "latest"), tags[0] if tags else None)
    newest = featured[1] if featured else (versions.items[0] if versions.items else None)
    return await page(request, "package.html", {
        "package": found, "path": package_path(found), "acts": _acts(acts), "tags": tags,
        "versions": versions.items, "version_total": versions.total, "referrers": referrers,
        "downloads": sum(v.download_count for v in versions.items),
        "pull_tag": _pull(host, found.repository, featured[0]) if featured else None,
        "pull_digest": _pull(host, found.repository, newest.digest) if newest else None,
        "source_link": _web_link(found.source), "visibilities": VISIBILITIES,
        "version_path": lambda v: f"{package_path(found)}/versions/{v.id}"})


def _acts(acts: frozenset[Action]) -> dict[str, bool]:
    return {action.value: action in acts for action in (Action.DELETE, Action.RESTORE, Action.CONFIGURE)}


def _web_link(url: str | None) -> str | None:
    """The source as a link only when it is an http(s) URL (never ``javascript:`` and the like)."""
    if url and url.lower().startswith(("https://", "http://")) and url.isprintable():
        return url
    return None


async def versions(request: web.Request) -> web.Response:
    viewer = await viewer_of(request)
    address = await _address(request)
    service = request.app[PACKAGES]
    found = await service.get_package(viewer, *address)
    acts = _acts(await service.acts(viewer, *address))
    number = _page_number(request)
    active = await service.list_versions(viewer, *address, "active", number, PER_PAGE)
    deleted = await service.list_versions(viewer, *address, "deleted", 1, 100) if acts["restore"] else None
    last = max(1, -(-active.total // PER_PAGE))
    path = package_path(found)
    return await page(request, "package_versions.html", {
        "package": found, "path": path, "acts": acts, "versions": active.items, "total": active.total,
        "deleted": deleted.items if deleted else (), "page": number, "last": last,
        "prev_link": f"{path}/versions?page={number - 1}" if number > 1 else None,
        "next_link": f"{path}/versions?page={number + 1}" if number < last else None,
        "version_path": lambda v: f"{path}/versions/{v.id}"})


async def version(request: web.Request) -> web.Response:
    viewer = await viewer_of(request)
    address = await _address(request)
    service = request.app[PACKAGES]
    found = await service.get_package(viewer, *address)
    acts = _acts(await service.acts(viewer, *address))
    shown = await service.get_version(viewer, *address, _version_id(request))
    if shown.deleted_at is not None and not acts["restore"]:
        raise PageError(404, "There is no such version.")
    referrers = (await service.referrers(viewer, *address, [shown.digest]))[shown.digest]
    host = registry_host(request)
    return await page(request, "package_version.html", {
        "package": found, "path": package_path(found), "acts": acts, "version": shown, "referrers": referrers,
        "pulls": [_pull(host, found.repository, ref) for ref in (*shown.tags, shown.digest)]
        if shown.deleted_at is None else []})


# the forms ------------------------------------------------------------------------------------------
async def delete_version(request: web.Request) -> web.StreamResponse:
    await posted_form(request)
    viewer = await viewer_of(request)
    address = await _address(request)
    await request.app[PACKAGES].delete_version(viewer, *address, _version_id(request), remote=request.remote)
    await access_changed(request)
    raise see_other(request, await _versions_path(request, viewer, address), "version_deleted")


async def restore_version(request: web.Request) -> web.StreamResponse:
    await posted_form(request)
    viewer = await viewer_of(request)
    address = await _address(request)
    await request.app[PACKAGES].restore_version(viewer, *address, _version_id(request), remote=request.remote)
    await access_changed(request)
    raise see_other(request, await _versions_path(request, viewer, address), "version_restored")


async def _versions_path(request: web.Request, viewer: Principal, address: tuple[str, str, str]) -> str:
    found = await request.app[PACKAGES].get_package(viewer, *address)
    return f"{package_path(found)}/versions"


async def set_visibility(request: web.Request) -> web.StreamResponse:
    form = await posted_form(request)
    viewer = await viewer_of(request)
    address = await _address(request)
    wanted = form.get("visibility", "")
    if wanted not in VISIBILITIES:
        raise PageError(422, f"visibility must be one of {', '.join(VISIBILITIES)}.")
    change = await request.app[PACKAGES].set_visibility(viewer, *address, wanted, remote=request.remote)
    await access_changed(request)
    raise see_other(request, package_path(change.package),
                    "visibility_not_public" if change.notice else "visibility_changed")


def add_routes(app: web.Application) -> None:
    r = app.router
    base = r"/packages/{namespace}/{name:.+}"
    version_path = base + r"/versions/{version_id:[0-9]{1,19}}"
    r.add_get("/packages", packages, name="web_packages")
    r.add_post(version_path + "/delete", delete_version, name="web_version_delete")
    r.add_post(version_path + "/restore", restore_version, name="web_version_restore")
    r.add_post(base + "/visibility", set_visibility, name="web_package_visibility")
    r.add_get(version_path, version, name="web_version")
    r.add_get(base + "/versions", versions, name="web_versions")
    r.add_get(base, package, name="web_package")


