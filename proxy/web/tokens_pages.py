"""The signed-in user's personal access tokens, as GitHub's ``/settings/tokens``: list, create, revoke.

    GET  /tokens                          a redirect to /settings/tokens (the nav's link)
    GET  /settings/tokens                 the list (note, hint, scopes, dates, state; never a secret)
    GET  /settings/tokens/new             the form: note, scopes, expiry
    POST /settings/tokens                 create; the answer shows the secret, once
    GET  /settings/tokens/{id}/revoke     "revoke this token?" (a POST form)
    POST /settings/tokens/{id}/revoke     revoke, then back to the list

Rules (the accounts API's, ``proxy.http.admin_api``, for a browser):
- only a signed-in browser sees these pages; an anonymous visitor is sent to sign in (303 to
  ``/signin?next=<this page's local path>``);
- a token made here never has more scopes than the token the session signed in with (a session
  signed in with a read-only token cannot mint a write token): 403, the form says why;
- the secret is in the answer to the POST that creates it, marked ``no-store``, and never again:
  not on a later page, not in a log, not in the session;
- revoking asks first; a revocation ends every use of the token at once in this process (the
  session that signed in with it too), in the others at their next poll;
- every change is audited with the user and their address.
"""

from __future__ import annotations

import time
from typing import Any, Callable
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDictProxy

from proxy.http import admin_api
from proxy.registry.access import SCOPES, Principal
from proxy.registry.accounts import AccountError, NotFound, TokenInfo, parse_scopes
from proxy.web.errors import PageError
from proxy.web.render import page, see_other
from proxy.web.sessions import posted_form, viewer_of

# what the form offers for expiry: days, or none (other whole numbers of days are accepted too)
EXPIRY_CHOICES = (("7", "7 days"), ("30", "30 days"), ("60", "60 days"), ("90", "90 days"),
                  ("365", "1 year"), ("none", "No expiry"))
DEFAULT_EXPIRY = "30"
SCOPE_TEXT = {"read:packages": "pull images and read packages",
              "write:packages": "push images, change visibility and roles (includes reading)",
              "delete:packages": "delete and restore versions"}
_MAX_ID = 2**63 - 1


# who asks -----------------------------------------------------------------------------------
def sign_in_redirect(request: web.Request) -> web.HTTPSeeOther:
    """303 to the sign-in page, to come back here after: ``next`` is this request's local path only."""
    here = request.rel_url.path_qs
    if not here.startswith("/") or here.startswith("//") or "\\" in here:
        here = "/"
    return web.HTTPSeeOther("/signin?next=" + quote(here, safe="/"))


async def signed_in_viewer(request: web.Request) -> Principal:
    """The browser's account; a redirect to sign in (raised) when it has none."""
    viewer = await viewer_of(request)
    if not viewer.signed_in:
        raise sign_in_redirect(request)
    return viewer


# the accounts service, off the event loop ---------------------------------------------------
accounts_of = admin_api.accounts_of
run = admin_api.run_in_database  # in the database's threads, never on the event loop
changed = admin_api.access_changed  # this process acts on its own change at once


def token_id(request: web.Request) -> int:
    """The path's token id as the database holds them (1 to 2**63 - 1); else the 404 page."""
    raw = request.match_info["id"]
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= _MAX_ID:
        raise PageError(404, "There is no such token.")
    return int(raw)


# what pages show of a token -----------------------------------------------------------------
def token_row(token: TokenInfo, now: float) -> dict[str, Any]:
    """The facts a page shows of a token: never its secret (TokenInfo holds none)."""
    return {"id": token.id, "user": token.user, "hint": token.hint, "note": token.note,
            "scopes": list(token.scopes), "state": token.state(now), "created_at": token.created_at,
            "last_used_at": token.last_used_at, "expires_at": token.expires_at, "revoked_at": token.revoked_at}


def section(request: web.Request) -> dict[str, str]:
    """The nav marks these pages as "tokens" (the path's first part, "settings", is no section)."""
    return {"nav": "tokens"} if request.path.startswith("/settings/") else {}


# the create form ----------------------------------------------------------------------------
def token_request(form: MultiDictProxy) -> tuple[tuple[str, ...], int | None, str]:
    """Scopes, expiry in days (None: never) and note of a create form; AccountError says what is wrong."""
    scopes = parse_scopes(form.getall("scopes", []))
    raw = (form.get("expires") or "").strip()
    if raw == "none":
        days = None
    elif raw.isascii() and raw.isdigit() and len(raw) <= 6:
        days = int(raw)  # Accounts.create_token bounds it
    else:
        raise AccountError("choose when the token expires: a number of days, or no expiry")
    return scopes, days, (form.get("note") or "").strip()


def form_context(viewer: Principal, form: MultiDictProxy | None = None, *, action: str,
                 owner: str, error: str | None = None) -> dict[str, Any]:
    """What tokens_new.html needs: the scopes the viewer may grant (those of their session's token)
    and the values sent back after an error."""
    chosen = set(form.getall("scopes", [])) if form is not None else {SCOPES[0]}
    return {"action": action, "owner": owner, "error": error,
            "scopes": [{"name": s, "text": SCOPE_TEXT[s], "allowed": s in viewer.scopes,
                        "checked": s in chosen and s in viewer.scopes} for s in SCOPES],
            "expiries": EXPIRY_CHOICES,
            "expires": (form.get("expires") if form is not None else None) or DEFAULT_EXPIRY,
            "note": (form.get("note") if form is not None else "") or ""}


async def create_token_page(request: web.Request, viewer: Principal, owner: str, form: MultiDictProxy, *,
                            action: str, back: str) -> web.Response:
    """Create a token for ``owner`` from ``form`` within the viewer's scopes; the answer shows the
    secret once. A bad field (422) or a scope beyond the session's (403) shows the form again, saying why."""

    async def again(error: str, status: int) -> web.Response:
        context = form_context(viewer, form, action=action, owner=owner, error=error)
        return await page(request, "tokens_new.html", {**context, **section(request)}, status=status)

    try:
        scopes, days, note = token_request(form)
    except AccountError as error:
        return await again(str(error), 422)
    beyond = sorted(set(scopes) - viewer.scopes)
    if beyond:
        return await again(f"the token this session signed in with lacks {', '.join(beyond)}: a token cannot "
                           f"create one with more scopes than its own", 403)
    try:
        token, secret = await run(request, accounts_of(request).create_token, owner, scopes, days, note,
                                  actor=viewer.user, remote=request.remote, not_after=viewer.expires_at)
    except NotFound:
        raise  # no such user: the 404 page
    except AccountError as error:
        return await again(str(error), 422)
    await changed(request)
    # pages are never cached (render.page): the secret is in this one answer only
    return await page(request, "tokens_created.html",
                      {"token": token_row(token, token.created_at), "secret": secret, "back": back,
                       "owner": owner, **section(request)}, status=201)


async def revoke_page(request: web.Request, viewer: Principal, *, owner: str | None, action: str,
                      back: str | Callable[[TokenInfo], str]) -> web.Response:
    """Ask before revoking a token (of ``owner``; None: anyone's, for server admins); ``back`` is
    where Cancel goes (or what gives it, from the token)."""
    wanted = token_id(request)
    token = await run(request, accounts_of(request).token, wanted)  # no such token: the 404 page
    if owner is not None and token.user != owner:  # another's token is no token of theirs
        raise PageError(404, f"no token with id {wanted} of {owner}")
    return await page(request, "tokens_revoke.html",
                      {"token": token_row(token, time.time()), "action": action,
                       "back": back(token) if callable(back) else back,
                       **section(request)})


async def revoke(request: web.Request, viewer: Principal, *, owner: str | None) -> TokenInfo:
    """Revoke the path's token (only one of ``owner``'s when given); the 404 page when there is none."""
    token = await run(request, accounts_of(request).revoke_token, token_id(request), user=owner,
                        actor=viewer.user, remote=request.remote)
    await changed(request)
    return token


# the pages ------------------------------------------------------------------------------------


async def to_tokens(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/settings/tokens")


async def tokens(request: web.Request) -> web.Response:
    """The signed-in user's tokens, newest first."""
    viewer = await signed_in_viewer(request)
    now = time.time()
    listed = await run(request, accounts_of(request).list_tokens, viewer.user)
    rows = [{**token_row(t, now), "revoke": f"/settings/tokens/{t.id}/revoke"} for t in reversed(listed)]
    return await page(request, "tokens.html", {"tokens": rows, "session_token": viewer.token_id, **section(request)})


async def new_token(request: web.Request) -> web.Response:
    viewer = await signed_in_viewer(request)
    assert viewer.user is not None
    return await page(request, "tokens_new.html",
                      {**form_context(viewer, action="/settings/tokens", owner=viewer.user), **section(request)})


async def create_token(request: web.Request) -> web.Response:
    form = await posted_form(request)
    viewer = await signed_in_viewer(request)
    assert viewer.user is not None
    return await create_token_page(request, viewer, viewer.user, form, action="/settings/tokens",
                                   back="/settings/tokens")


async def confirm_revoke(request: web.Request) -> web.Response:
    viewer = await signed_in_viewer(request)
    return await revoke_page(request, viewer, owner=viewer.user, action=request.path, back="/settings/tokens")


async def revoke_token(request: web.Request) -> web.StreamResponse:
    await posted_form(request)
    viewer = await signed_in_viewer(request)
    await revoke(request, viewer, owner=viewer.user)
    raise see_other(request, "/settings/tokens", done="token_revoked")


def add_routes(app: web.Application) -> None:
    add = app.router.add_route
    add("GET", "/tokens", to_tokens, name="page_tokens_short")
    add("GET", "/settings/tokens", tokens, name="page_tokens")
    add("GET", "/settings/tokens/new", new_token, name="page_tokens_new")
    add("POST", "/settings/tokens", create_token, name="page_tokens_create")
    add("GET", r"/settings/tokens/{id}/revoke", confirm_revoke, name="page_token_revoke_confirm")
    add("POST", r"/settings/tokens/{id}/revoke", revoke_token, name="page_token_revoke")
