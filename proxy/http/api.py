"""GitHub's packages REST endpoints under ``/api/``, same paths and field names, and the OpenAPI
document at ``/api/openapi.json``.

Rules:
- the caller is whoever ``proxy.http.identity.caller_of`` says (Basic ``user:token`` or
  ``Bearer <token>``); what they may do is decided by ``proxy.registry.access`` inside the
  package service; anonymous callers see public packages only, and a package the caller may not
  read is 404 whatever it is, as on GitHub;
- a name with ``/`` is sent as ``%2F``: aiohttp matches routes on the still-encoded path, so one
  path segment holds the whole name;
- errors are GitHub's: ``{"message", "documentation_url"}`` with 400, 401 (with a Basic
  challenge), 403, 404, 409, 422, 429 or 503; never a traceback;
- lists page with ``page`` and ``per_page`` (at most 100) and say so in a ``Link`` header.
- roles on a package (``…/roles``, ``…/roles/users/{user}``, ``…/roles/orgs/{group}``, the
  latter for every member of the organisation) are listed and changed by its admins only; a
  change is acted on in this process before the answer leaves.
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import datetime, timezone
from typing import Awaitable, Callable
from urllib.parse import quote, urlencode

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from proxy.errors import OCIError, Unauthorized
from proxy.http.identity import caller_of
from proxy.http.keys import CONFIG, IDENTITY, PACKAGES
from proxy.http.openapi import DOCUMENTATION_URL, OWNERS, document
from proxy.registry.access import Principal
from proxy.registry.packages import (InvalidRequest, PackageConflict, PackageNotFound, PackageRefused, PackageView,
                                     RoleGrant, VersionView)

log = logging.getLogger("wharf.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_PER_PAGE = 100
_MAX_ID = 2**63 - 1


class BadJSON(Exception):
    """The request body is not the JSON object the endpoint takes."""


def github_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message, "documentation_url": DOCUMENTATION_URL}, status=status,
                             headers=headers)


def _answer_errors(handler: Handler) -> Handler:
    """Every failure as GitHub answers it (the one place the API picks error statuses)."""

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Unauthorized as error:
            return github_error(401, error.message or "Requires authentication",
                                {**error.headers, "WWW-Authenticate": 'Basic realm="wharf"'})
        except OCIError as error:  # Denied 403, NameUnknown 404, TooManyRequests 429 ...
            status = error.status if 400 <= error.status < 600 else 500
            return github_error(status, error.message, error.headers)
        except PackageNotFound as error:
            return github_error(404, str(error) or "Not Found")
        except PackageRefused as error:
            return github_error(403, str(error))
        except PackageConflict as error:
            return github_error(409, str(error))
        except InvalidRequest as error:
            return github_error(422, f"Validation Failed: {error}")
        except BadJSON as error:
            return github_error(400, f"Problems parsing JSON: {error}")
        except SQLAlchemyError:
            log.exception("database error on %s %s", request.method, request.path)
            return github_error(503, "the database is unavailable; try again")

    return answer


# what the handlers read from the request ------------------------------------------------------------
async def _principal(request: web.Request) -> Principal:
    return (await caller_of(request)).principal


def _int(request: web.Request, key: str, default: int, lowest: int, highest: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{key} must be an integer") from None
    if not lowest <= value <= highest:
        raise InvalidRequest(f"{key} must be between {lowest} and {highest}")
    return value


def paging(request: web.Request) -> tuple[int, int]:
    return (_int(request, "page", 1, 1, 1_000_000), _int(request, "per_page", 30, 1, MAX_PER_PAGE))


def _owner(request: web.Request) -> tuple[str | None, str | None]:
    """(``users`` | ``orgs`` | None, the owner's name or None for the signed-in user)."""
    if "username" in request.match_info:
        return "users", request.match_info["username"]
    if "org" in request.match_info:
        return "orgs", request.match_info["org"]
    return None, None


def _address(request: web.Request) -> tuple[str | None, str | None, str]:
    if request.match_info["package_type"] != "container":
        raise PackageNotFound("only container packages are kept here")
    kind, owner = _owner(request)
    return kind, owner, request.match_info["package_name"]


def _version_id(request: web.Request) -> int:
    raw = request.match_info["package_version_id"]
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= _MAX_ID:
        raise PackageNotFound(f"no version {raw[:40]!r}")
    return int(raw)


def _grantee(request: web.Request) -> dict[str, str]:
    """Whom the role at ``…/roles/users/{user}`` or ``…/roles/orgs/{group}`` is for, as the
    packages service takes it: ``{"user": name}`` or ``{"org": name}`` (its members as a group)."""
    if "user" in request.match_info:
        return {"user": request.match_info["user"]}
    return {"org": request.match_info["group"]}


async def _json_object(request: web.Request) -> dict:
    try:
        body = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadJSON("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadJSON("the body must be a JSON object")
    return body


def _base(request: web.Request) -> str:
    return request.app[CONFIG].public_url or f"{request.scheme}://{request.host}"


async def _changed(request: web.Request) -> None:
    """Access facts changed: this process's remembered identities and package facts go now (other
    workers follow the database revision)."""
    changed = getattr(request.app.get(IDENTITY), "changed", None)
    if changed is not None:
        await changed()


# the answers' bodies ----------------------------------------------------------------------------------
def _time(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _package_urls(base: str, package: PackageView) -> tuple[str, str]:
    kind = "orgs" if package.owner_type == "Organization" else "users"
    api = f"{base}/api/{kind}/{quote(package.namespace, safe='')}/packages/container/{quote(package.name, safe='')}"
    html = f"{base}/packages/{quote(package.namespace, safe='')}/{quote(package.name, safe='/')}"
    return api, html


def package_json(base: str, package: PackageView) -> dict:
    url, html_url = _package_urls(base, package)
    return {"id": package.id, "name": package.name, "package_type": "container", "visibility": package.visibility,
            "owner": {"login": package.namespace, "type": package.owner_type},
            "version_count": package.version_count, "url": url, "html_url": html_url,
            "created_at": _time(package.created_at), "updated_at": _time(package.updated_at),
            "description": package.description, "licenses": package.licenses, "source": package.source,
            "truncated": list(package.truncated)}


def version_json(base: str, package: PackageView, version: VersionView) -> dict:
    url, html_url = _package_urls(base, package)
    return {"id": version.id, "name": version.digest, "url": f"{url}/versions/{version.id}",
            "html_url": f"{html_url}/versions/{version.id}", "package_html_url": html_url,
            "media_type": version.media_type, "tags": list(version.tags), "platforms": list(version.platforms),
            "size": version.size, "created_at": _time(version.created_at), "updated_at": _time(version.updated_at),
            "deleted_at": _time(version.deleted_at), "download_count": version.download_count,
            "metadata": {"package_type": "container", "container": {"tags": list(version.tags)}}}


def role_json(grant: RoleGrant) -> dict:
    return {grant.kind: grant.name, "role": grant.role}


def paged(request: web.Request, items: list, total: int, page: int, per_page: int) -> web.Response:
    """The items (a list, or an object holding them), with GitHub's ``Link`` header when there is more than one page."""
    last = max(1, -(-total // per_page))
    links = []
    query = {k: v for k, v in request.query.items() if k not in ("page", "per_page")}

    def link(number: int, rel: str) -> str:
        target = request.url.with_query(urlencode({**query, "page": number, "per_page": per_page}))
        base = _base(request)
        return f'<{base}{target.raw_path_qs}>; rel="{rel}"'

    if page > 1:
        links += [link(min(page - 1, last), "prev"), link(1, "first")]
    if page < last:
        links += [link(page + 1, "next"), link(last, "last")]
    return web.json_response(items, headers={"Link": ", ".join(links)} if links else None)


# handlers -----------------------------------------------------------------------------------------------
@_answer_errors
async def list_packages(request: web.Request) -> web.Response:
    principal = await _principal(request)
    kind, owner = _owner(request)
    package_type = request.query.get("package_type")
    if package_type is None:
        raise InvalidRequest("package_type is required")
    if package_type != "container":
        raise InvalidRequest("package_type must be container (the only type kept here)")
    page, per_page = paging(request)
    found = await request.app[PACKAGES].list_packages(principal, kind, owner, request.query.get("visibility"),
                                                      page, per_page)
    base = _base(request)
    return paged(request, [package_json(base, p) for p in found.items], found.total, page, per_page)


@_answer_errors
async def get_package(request: web.Request) -> web.Response:
    principal = await _principal(request)
    package = await request.app[PACKAGES].get_package(principal, *_address(request))
    return web.json_response(package_json(_base(request), package))


@_answer_errors
async def delete_package(request: web.Request) -> web.Response:
    principal = await _principal(request)
    await request.app[PACKAGES].delete_package(principal, *_address(request), remote=request.remote)
    await _changed(request)
    return web.Response(status=204)


@_answer_errors
async def restore_package(request: web.Request) -> web.Response:
    principal = await _principal(request)
    await request.app[PACKAGES].restore_package(principal, *_address(request), remote=request.remote)
    await _changed(request)
    return web.Response(status=204)


@_answer_errors
async def set_visibility(request: web.Request) -> web.Response:
    principal = await _principal(request)
    address = _address(request)
    body = await _json_object(request)
    if "visibility" not in body:
        raise InvalidRequest("visibility is required")
    change = await request.app[PACKAGES].set_visibility(principal, *address, body["visibility"],
                                                        remote=request.remote)
    await _changed(request)
    return web.json_response({**package_json(_base(request), change.package), "notice": change.notice})


@_answer_errors
async def list_versions(request: web.Request) -> web.Response:
    principal = await _principal(request)
    address = _address(request)
    page, per_page = paging(request)
    packages = request.app[PACKAGES]
    state = request.query.get("state", "active")
    found = await packages.list_versions(principal, *address, state, page, per_page)
    package = await packages.get_package(principal, *address)
    base = _base(request)
    return paged(request, [version_json(base, package, v) for v in found.items], found.total, page, per_page)


@_answer_errors
async def get_version(request: web.Request) -> web.Response:
    principal = await _principal(request)
    address = _address(request)
    packages = request.app[PACKAGES]
    version = await packages.get_version(principal, *address, _version_id(request))
    package = await packages.get_package(principal, *address)
    return web.json_response(version_json(_base(request), package, version))


@_answer_errors
async def delete_version(request: web.Request) -> web.Response:
    principal = await _principal(request)
    await request.app[PACKAGES].delete_version(principal, *_address(request), _version_id(request),
                                               remote=request.remote)
    await _changed(request)
    return web.Response(status=204)


@_answer_errors
async def restore_version(request: web.Request) -> web.Response:
    principal = await _principal(request)
    await request.app[PACKAGES].restore_version(principal, *_address(request), _version_id(request),
                                                remote=request.remote)
    await _changed(request)
    return web.Response(status=204)


@_answer_errors
async def list_roles(request: web.Request) -> web.Response:
    principal = await _principal(request)
    grants = await request.app[PACKAGES].list_roles(principal, *_address(request))
    return web.json_response([role_json(g) for g in grants])


@_answer_errors
async def set_role(request: web.Request) -> web.Response:
    """PUT ``{"role": "read" | "write" | "admin"}``: the grantee's role on the package, replacing theirs."""
    principal = await _principal(request)
    address = _address(request)
    body = await _json_object(request)
    if "role" not in body:
        raise InvalidRequest("role is required")
    if body["role"] is None:  # the service takes None as "remove": that is DELETE's to say
        raise InvalidRequest("role must be one of read, write, admin (DELETE removes a role)")
    grant = await request.app[PACKAGES].set_role(principal, *address, **_grantee(request), role=body["role"],
                                                 remote=request.remote)
    await _changed(request)
    return web.json_response(role_json(grant))


@_answer_errors
async def delete_role(request: web.Request) -> web.Response:
    principal = await _principal(request)
    await request.app[PACKAGES].set_role(principal, *_address(request), **_grantee(request), role=None,
                                         remote=request.remote)
    await _changed(request)
    return web.Response(status=204)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(_base(request)))


def setup_packages_api(app: web.Application) -> None:
    """The routes of ``proxy.http.openapi.PACKAGE_PATHS``, for the signed-in user, users and orgs."""
    r = app.router
    r.add_get("/api/openapi.json", openapi, name="api_openapi")
    for prefix, _, _, stem in OWNERS:
        package = f"{prefix}/packages/{{package_type}}/{{package_name}}"
        version = f"{package}/versions/{{package_version_id}}"
        r.add_get(f"{prefix}/packages", list_packages, name=f"api_{stem}_packages")
        r.add_get(package, get_package, name=f"api_{stem}_package", allow_head=False)
        r.add_delete(package, delete_package, name=f"api_{stem}_package_delete")
        r.add_patch(package, set_visibility, name=f"api_{stem}_package_patch")
        r.add_post(f"{package}/restore", restore_package, name=f"api_{stem}_package_restore")
        r.add_get(f"{package}/versions", list_versions, name=f"api_{stem}_versions", allow_head=False)
        r.add_get(version, get_version, name=f"api_{stem}_version", allow_head=False)
        r.add_delete(version, delete_version, name=f"api_{stem}_version_delete")
        r.add_post(f"{version}/restore", restore_version, name=f"api_{stem}_version_restore")
        r.add_get(f"{package}/roles", list_roles, name=f"api_{stem}_roles", allow_head=False)
        for grantee in ("users/{user}", "orgs/{group}"):
            kind = grantee.partition("/")[0]
            r.add_put(f"{package}/roles/{grantee}", set_role, name=f"api_{stem}_role_{kind}_put")
            r.add_delete(f"{package}/roles/{grantee}", delete_role, name=f"api_{stem}_role_{kind}_delete")
