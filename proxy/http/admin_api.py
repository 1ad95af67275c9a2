"""The accounts API: server admins manage users, organisations and tokens; every signed-in user
manages their own tokens. JSON in and out, GitHub's style of errors (``{"message": ...}``).

    GET  POST  /api/admin/users                      {"name", "admin"}
    GET  POST  /api/admin/orgs                       {"name", "owner"}
    PUT        /api/admin/orgs/{org}/members/{user}  {"role": "owner" | "member"}
    GET  POST  /api/admin/users/{user}/tokens        {"scopes": [...], "expires_days", "note"}
    DELETE     /api/admin/tokens/{id}
    GET  POST  /api/user/tokens                      (the caller's own)
    DELETE     /api/user/tokens/{id}

Rules:
- anonymous callers get 401 with a Basic challenge; signed-in callers who are not server admins
  get 403 on ``/api/admin/``;
- a token's secret is in the answer that creates it, and never again;
- a token never grants more than the token that created it: its scopes are a subset of the
  caller's, a server admin's too (a leaked read-only token cannot mint a write token);
- a bad body or field is 422 naming it; no such user, organisation or token is 404;
- every change is audited with the caller and their address, and takes effect in this process at
  once (the identity cache is dropped), in the others at their next poll.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from proxy.errors import OCIError
from proxy.http.identity import caller_of
from proxy.http.keys import ACCOUNTS, DATABASE, IDENTITY
from proxy.registry.access import Principal
from proxy.registry.accounts import AccountError, Accounts, NotFound, OrgInfo, TokenInfo, UserInfo, parse_scopes
from proxy.registry.audit import iso_time

MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An answer other than success: its status, message and headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda value: json.dumps(value, separators=(",", ":")))


def _api(handler: Handler) -> Handler:
    """Errors as GitHub writes them: ``{"message": ...}`` with the status that fits."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return web.json_response({"message": error.message}, status=error.status, headers=error.headers)
        except NotFound as error:
            return web.json_response({"message": str(error)}, status=404)
        except AccountError as error:
            return web.json_response({"message": str(error)}, status=422)
        except OCIError as error:  # the sign-in was refused (401) or throttled (429)
            headers = dict(error.headers)
            if error.status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="wharf"'
            return web.json_response({"message": error.message}, status=error.status, headers=headers)

    answer.__name__ = handler.__name__
    answer.__doc__ = handler.__doc__
    return answer


api_handler = _api  # the same error shapes for the other /api/ modules


# who asks -----------------------------------------------------------------------------------
async def signed_in(request: web.Request) -> Principal:
    """The caller's Wharf account; 401 with a Basic challenge when there is none."""
    principal = (await caller_of(request)).principal
    if not principal.signed_in:
        raise ApiError(401, "requires authentication: Basic with a user name and personal access token",
                       {"WWW-Authenticate": 'Basic realm="wharf"'})
    return principal


async def server_admin(request: web.Request) -> Principal:
    principal = await signed_in(request)
    if not principal.admin:
        raise ApiError(403, f"{principal.user} is not a server admin")
    return principal


# bodies -------------------------------------------------------------------------------------
async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (at most 64 KiB)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise ApiError(422, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ..., *,
           what: str) -> Any:
    """``body[name]`` when it is of ``kind`` (``default`` when absent and one is given); else 422."""
    if name not in body or (body[name] is None and default is not ...):
        if default is ...:
            raise ApiError(422, f"{name!r} is required ({what})")
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(422, f"{name!r} must be {what}")
    return value


_MAX_ID = 2**63 - 1


def _token_id(request: web.Request) -> int:
    """A token id as the database holds them (1 to 2**63 - 1); anything else is no such token."""
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= _MAX_ID:
        raise ApiError(404, "no such token")
    return int(raw)


# shapes -------------------------------------------------------------------------------------
def _time(epoch: float | None) -> str | None:
    return iso_time(epoch) if epoch is not None else None


def user_json(user: UserInfo) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "admin": user.admin, "created_at": _time(user.created_at),
            "orgs": dict(user.orgs)}


def org_json(org: OrgInfo) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, "created_at": _time(org.created_at), "members": dict(org.members)}


def token_json(token: TokenInfo, now: float) -> dict[str, Any]:
    return {"id": token.id, "user": token.user, "hint": token.hint, "scopes": list(token.scopes),
            "note": token.note, "state": token.state(now), "created_at": _time(token.created_at),
            "expires_at": _time(token.expires_at), "last_used_at": _time(token.last_used_at),
            "revoked_at": _time(token.revoked_at)}


def accounts_of(request: web.Request) -> Accounts:
    return request.app[ACCOUNTS]  # type: ignore[return-value]


async def run_in_database(request: web.Request, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn`` in the database's threads (never on the event loop)."""
    return await request.app[DATABASE].run(lambda: fn(*args, **kwargs))


async def access_changed(request: web.Request) -> None:
    """Access facts changed: this process acts on it at once (other processes at their next poll)."""
    await request.app[IDENTITY].changed()


# admin: users and organisations ---------------------------------------------------------------
@_api
async def list_users(request: web.Request) -> web.Response:
    await server_admin(request)
    return _json([user_json(u) for u in await run_in_database(request, accounts_of(request).list_users)])


@_api
async def add_user(request: web.Request) -> web.Response:
    caller = await server_admin(request)
    body = await _body(request)
    name = _field(body, "name", str, what="the user's name, a string")
    admin = _field(body, "admin", bool, False, what="true or false")
    user = await run_in_database(request, accounts_of(request).add_user, name, admin, actor=caller.user, remote=request.remote)
    await access_changed(request)
    return _json(user_json(user), status=201)


@_api
async def list_orgs(request: web.Request) -> web.Response:
    await server_admin(request)
    return _json([org_json(o) for o in await run_in_database(request, accounts_of(request).list_orgs)])


@_api
async def add_org(request: web.Request) -> web.Response:
    caller = await server_admin(request)
    body = await _body(request)
    name = _field(body, "name", str, what="the organisation's name, a string")
    owner = _field(body, "owner", str, what="the name of the user who owns it, a string")
    org = await run_in_database(request, accounts_of(request).add_org, name, owner, actor=caller.user, remote=request.remote)
    await access_changed(request)
    return _json(org_json(org), status=201)


@_api
async def set_member(request: web.Request) -> web.Response:
    caller = await server_admin(request)
    body = await _body(request)
    role = _field(body, "role", str, "member", what="owner or member")
    org, user = request.match_info["org"], request.match_info["user"]
    await run_in_database(request, accounts_of(request).add_member, org, user, role, actor=caller.user, remote=request.remote)
    await access_changed(request)
    return _json({"org": org, "user": user, "role": role})


# tokens ---------------------------------------------------------------------------------------
def _token_request(body: dict[str, Any]) -> tuple[tuple[str, ...], int | None, str]:
    scopes = _field(body, "scopes", list, what="a list of scopes (read:packages, write:packages, delete:packages)")
    if not all(isinstance(scope, str) for scope in scopes):
        raise ApiError(422, "'scopes' must be a list of strings")
    days = _field(body, "expires_days", int, None, what="a whole number of days")
    note = _field(body, "note", str, "", what="a string")
    return parse_scopes(scopes), days, note


async def _create_token(request: web.Request, caller: Principal, user: str, *,
                        within: frozenset[str] | None) -> web.Response:
    scopes, days, note = _token_request(await _body(request))
    if within is not None and not set(scopes) <= within:
        raise ApiError(403, f"the token in use lacks {', '.join(sorted(set(scopes) - within))}: a token "
                            f"cannot create one with more scopes than its own")
    token, secret = await run_in_database(request, accounts_of(request).create_token, user, scopes, days, note,
                               actor=caller.user, remote=request.remote, not_after=caller.expires_at)
    await access_changed(request)
    now = token.created_at
    return _json({**token_json(token, now), "token": secret}, status=201)


async def _list_tokens(request: web.Request, user: str) -> web.Response:
    import time

    now = time.time()
    return _json([token_json(t, now) for t in await run_in_database(request, accounts_of(request).list_tokens, user)])


async def _revoke(request: web.Request, caller: Principal, owner: str | None) -> web.Response:
    await run_in_database(request, accounts_of(request).revoke_token, _token_id(request), user=owner, actor=caller.user,
               remote=request.remote)
    await access_changed(request)
    return web.Response(status=204)


@_api
async def admin_list_tokens(request: web.Request) -> web.Response:
    await server_admin(request)
    return await _list_tokens(request, request.match_info["user"])


@_api
async def admin_create_token(request: web.Request) -> web.Response:
    caller = await server_admin(request)  # an admin's token too mints nothing beyond its own scopes
    return await _create_token(request, caller, request.match_info["user"], within=caller.scopes)


@_api
async def admin_revoke_token(request: web.Request) -> web.Response:
    return await _revoke(request, await server_admin(request), None)


@_api
async def own_tokens(request: web.Request) -> web.Response:
    caller = await signed_in(request)
    assert caller.user is not None
    return await _list_tokens(request, caller.user)


@_api
async def create_own_token(request: web.Request) -> web.Response:
    caller = await signed_in(request)
    assert caller.user is not None
    return await _create_token(request, caller, caller.user, within=caller.scopes)


@_api
async def revoke_own_token(request: web.Request) -> web.Response:
    caller = await signed_in(request)
    return await _revoke(request, caller, caller.user)


def setup_admin_api(app: web.Application) -> None:
    """Register the accounts API's routes."""
    add = app.router.add_route
    add("GET", "/api/admin/users", list_users, name="api_admin_users")
    add("POST", "/api/admin/users", add_user, name="api_admin_users_add")
    add("GET", "/api/admin/orgs", list_orgs, name="api_admin_orgs")
    add("POST", "/api/admin/orgs", add_org, name="api_admin_orgs_add")
    add("PUT", "/api/admin/orgs/{org}/members/{user}", set_member, name="api_admin_org_member")
    add("GET", "/api/admin/users/{user}/tokens", admin_list_tokens, name="api_admin_tokens")
    add("POST", "/api/admin/users/{user}/tokens", admin_create_token, name="api_admin_tokens_add")
    add("DELETE", "/api/admin/tokens/{id}", admin_revoke_token, name="api_admin_token_revoke")
    add("GET", "/api/user/tokens", own_tokens, name="api_user_tokens")
    add("POST", "/api/user/tokens", create_own_token, name="api_user_tokens_add")
    add("DELETE", "/api/user/tokens/{id}", revoke_own_token, name="api_user_token_revoke")
