"""The server admin's pages: users, organisations and each user's tokens.

    GET  /admin                               users and organisations, with the forms to add them
    POST /admin/users                         add a user (name, server admin or not)
    POST /admin/orgs                          add an organisation with its owner
    POST /admin/orgs/{org}/members            add a member or change a member's role
    GET  /admin/users/{user}/tokens           a user's tokens
    GET  /admin/users/{user}/tokens/new       the form to make one for them
    POST /admin/users/{user}/tokens           make it; the answer shows the secret, once
    GET  /admin/tokens/{id}/revoke            "revoke this token?" (a POST form)
    POST /admin/tokens/{id}/revoke            revoke it

Rules (the accounts API's, ``proxy.http.admin_api``, for a browser):
- server admins only: anonymous visitors are sent to sign in, other signed-in users get a 403
  page on every route, GET and POST alike, and nothing changes;
- a token made here never has more scopes than the admin's session token;
- a bad field re-shows the page with the reason (422); no such user, organisation or token is 404;
- every change is audited with the admin and their address and takes effect at once in this
  process (the identity cache is dropped), in the others at their next poll.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from aiohttp import web

from proxy.registry.access import Principal
from proxy.registry.accounts import ORG_ROLES, AccountError
from proxy.web.errors import PageError
from proxy.web.render import page, see_other
from proxy.web.sessions import posted_form
from proxy.web.tokens_pages import (accounts_of, changed, create_token_page, form_context, revoke,
                                    revoke_page, run, signed_in_viewer, token_row)

async def server_admin(request: web.Request) -> Principal:
    """The signed-in server admin; else sign in first (anonymous) or the 403 page (anyone else)."""
    viewer = await signed_in_viewer(request)
    if not viewer.admin:
        raise PageError(403, f"{viewer.user} is not a server admin: this page is for server admins only.")
    return viewer


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


# users and organisations ----------------------------------------------------------------------
async def _overview(request: web.Request, *, error: str | None = None, section: str | None = None,
                    form: Any = None, status: int = 200) -> web.Response:
    accounts = accounts_of(request)
    users = await run(request, accounts.list_users)
    orgs = await run(request, accounts.list_orgs)
    return await page(request, "admin.html", {
        "error": error, "section": section, "form": form or {}, "roles": ORG_ROLES,
        "users": [{"name": u.name, "admin": u.admin, "created_at": u.created_at, "orgs": dict(u.orgs),
                   "tokens": _path("admin", "users", u.name, "tokens")} for u in users],
        "orgs": [{"name": o.name, "created_at": o.created_at, "members": dict(o.members),
                  "action": _path("admin", "orgs", o.name, "members")} for o in orgs],
    }, status=status)


async def overview(request: web.Request) -> web.Response:
    await server_admin(request)
    return await _overview(request)


async def add_user(request: web.Request) -> web.StreamResponse:
    form = await posted_form(request)
    viewer = await server_admin(request)
    name = (form.get("name") or "").strip()
    try:
        await run(request, accounts_of(request).add_user, name, form.get("admin") == "on", actor=viewer.user,
                  remote=request.remote)
    except AccountError as error:
        return await _overview(request, error=str(error), section="users", form=form, status=422)
    await changed(request)
    raise see_other(request, "/admin", done="user_created")


async def add_org(request: web.Request) -> web.StreamResponse:
    form = await posted_form(request)
    viewer = await server_admin(request)
    name, owner = (form.get("name") or "").strip(), (form.get("owner") or "").strip()
    try:
        await run(request, accounts_of(request).add_org, name, owner, actor=viewer.user, remote=request.remote)
    except AccountError as error:  # a bad or taken name, no such owner: the form's fault
        return await _overview(request, error=str(error), section="orgs", form=form, status=422)
    await changed(request)
    raise see_other(request, "/admin", done="org_created")


async def set_member(request: web.Request) -> web.StreamResponse:
    form = await posted_form(request)
    viewer = await server_admin(request)
    org = request.match_info["org"]
    await run(request, accounts_of(request).org, org)  # no such organisation: the 404 page
    user, role = (form.get("user") or "").strip(), (form.get("role") or "member").strip()
    try:
        await run(request, accounts_of(request).add_member, org, user, role, actor=viewer.user,
                  remote=request.remote)
    except AccountError as error:  # no such user, a bad role, the last owner
        return await _overview(request, error=str(error), section=f"org:{org}", form=form, status=422)
    await changed(request)
    raise see_other(request, "/admin", done="member_changed")


# a user's tokens ------------------------------------------------------------------------------
async def user_tokens(request: web.Request) -> web.Response:
    viewer = await server_admin(request)
    user = await run(request, accounts_of(request).user, request.match_info["user"])
    now = time.time()
    listed = await run(request, accounts_of(request).list_tokens, user.name)
    return await page(request, "admin_user.html", {
        "user": {"name": user.name, "admin": user.admin, "orgs": dict(user.orgs)},
        "tokens": [{**token_row(t, now), "revoke": _path("admin", "tokens", str(t.id), "revoke")}
                   for t in reversed(listed)],
        "new": _path("admin", "users", user.name, "tokens", "new"), "session_token": viewer.token_id})


async def new_user_token(request: web.Request) -> web.Response:
    viewer = await server_admin(request)
    user = await run(request, accounts_of(request).user, request.match_info["user"])
    return await page(request, "tokens_new.html",
                      form_context(viewer, action=_path("admin", "users", user.name, "tokens"), owner=user.name))


async def create_user_token(request: web.Request) -> web.Response:
    form = await posted_form(request)
    viewer = await server_admin(request)
    user = await run(request, accounts_of(request).user, request.match_info["user"])
    back = _path("admin", "users", user.name, "tokens")
    return await create_token_page(request, viewer, user.name, form, action=back, back=back)


async def confirm_revoke(request: web.Request) -> web.Response:
    viewer = await server_admin(request)
    return await revoke_page(request, viewer, owner=None, action=request.path,
                             back=lambda token: _path("admin", "users", token.user, "tokens"))


async def revoke_token(request: web.Request) -> web.StreamResponse:
    await posted_form(request)
    viewer = await server_admin(request)
    token = await revoke(request, viewer, owner=None)
    raise see_other(request, _path("admin", "users", token.user, "tokens"), done="token_revoked")


def add_routes(app: web.Application) -> None:
    add = app.router.add_route
    add("GET", "/admin", overview, name="page_admin")
    add("POST", "/admin/users", add_user, name="page_admin_users_add")
    add("POST", "/admin/orgs", add_org, name="page_admin_orgs_add")
    add("POST", "/admin/orgs/{org}/members", set_member, name="page_admin_org_member")
    add("GET", "/admin/users/{user}/tokens", user_tokens, name="page_admin_user_tokens")
    add("GET", "/admin/users/{user}/tokens/new", new_user_token, name="page_admin_user_tokens_new")
    add("POST", "/admin/users/{user}/tokens", create_user_token, name="page_admin_user_tokens_add")
    add("GET", "/admin/tokens/{id}/revoke", confirm_revoke, name="page_admin_token_revoke_confirm")
    add("POST", "/admin/tokens/{id}/revoke", revoke_token, name="page_admin_token_revoke")
