"""Signing in and out: ``GET /signin`` (the form), ``POST /signin`` (user name and personal access
token), ``POST /signout``.

Rules:
- sign-in takes a user name and one of their personal access tokens (accounts have no
  passwords); the session then acts with exactly that token's scopes, and ends with it;
- failed sign-ins are counted and throttled with the same ``LoginThrottle`` as ``docker login``
  (per client address and per user name): past the limit every attempt is a 429 page with
  ``Retry-After``, good or bad, until the window passes;
- the sign-in form carries its own CSRF token before any session exists (login CSRF): a random
  value in a cookie (HttpOnly, SameSite=Strict) and the same value in the form; a POST whose two
  differ, or that comes from another site, is refused and signs nobody in;
- every sign-in makes a new session (the one the browser held ends), so nobody can fix a
  session id for a victim to sign into; sign-out ends the session on the server, not only the
  cookie;
- the token is never written back into the page, nor logged; only the sign-in is audited.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from aiohttp import web

from proxy.http.keys import AUDIT, DATABASE, IDENTITY, LOGIN_THROTTLE, WEB_SESSIONS
from proxy.registry.identity import PAT_PREFIX
from proxy.web.errors import PageError
from proxy.web.render import page, see_other
from proxy.web.sessions import (COOKIE, clear_cookie, posted_form, read_form, remember_session, session_of,
                                set_cookie)

log = logging.getLogger("wharf.web")

SIGNIN_COOKIE = "wharf_signin"  # the sign-in form's CSRF value (double submit)
_MAX_FIELD = 512


def _next(value: str | None) -> str:
    """Where to go after signing in: a path of this site, else the packages."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value \
            and value.isprintable() and len(value) <= 2048:
        return value
    return "/packages"


async def _form_page(request: web.Request, *, status: int = 200, error: str | None = None,
                     user: str = "", next_path: str | None = None) -> web.Response:
    """The sign-in form, with a fresh login-CSRF value in its cookie and field."""
    value = secrets.token_urlsafe(32)
    response = await page(request, "signin.html", {"signin_csrf": value, "error": error, "user": user,
                                                    "next": _next(next_path or request.query.get("next"))},
                          status=status)
    set_cookie(request, response, SIGNIN_COOKIE, value, max_age=3600, samesite="Strict")
    return response


async def signin_form(request: web.Request) -> web.Response:
    return await _form_page(request)


async def signin(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    cookie, sent = request.cookies.get(SIGNIN_COOKIE, ""), form.get("csrf", "")
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise PageError(403, "The sign-in form has expired or was not sent from this site; reload it and try again.")
    user = str(form.get("user", "")).strip()[:_MAX_FIELD]
    token = str(form.get("token", "")).strip()[:_MAX_FIELD]
    next_path = form.get("next")
    if not user or not token:
        return await _form_page(request, status=422, error="Enter your user name and a token.", user=user,
                                next_path=next_path)
    app = request.app
    identity, throttle = app[IDENTITY], app[LOGIN_THROTTLE]
    if not identity.remembers(user, token):
        await throttle.check(request.remote, user)  # 429 while throttled
    principal = await identity.authenticate(user, token) if token.startswith(PAT_PREFIX) else None
    if principal is None:
        await throttle.failed(request.remote, user, "bad token")
        return await _form_page(request, status=403, user=user, next_path=next_path,
                                error="That user name and token do not match an account here "
                                      "(or the token was revoked or has expired).")
    previous = request.cookies.get(COOKIE)
    session_id, session = await app[DATABASE].run(app[WEB_SESSIONS].start, principal, previous)
    remember_session(request, session)
    _audit(request, "web.signin", principal.user)
    redirect = _redirect(request, _next(next_path), "signed_in")
    set_cookie(request, redirect, COOKIE, session_id, max_age=app[WEB_SESSIONS].seconds)
    clear_cookie(request, redirect, SIGNIN_COOKIE)
    return redirect


async def signout(request: web.Request) -> web.StreamResponse:
    """Ends the session on the server; without a session there is nothing to end."""
    session = await session_of(request)
    if session is not None:
        await posted_form(request)
        await request.app[DATABASE].run(request.app[WEB_SESSIONS].end, request.cookies[COOKIE])
        remember_session(request, None)
        _audit(request, "web.signout", session.principal.user)
    redirect = _redirect(request, "/packages", "signed_out")
    clear_cookie(request, redirect, COOKIE)
    return redirect


def _redirect(request: web.Request, location: str, done: str) -> web.Response:
    """``see_other`` as a response that can carry cookies."""
    return web.Response(status=303, headers={"Location": see_other(request, location, done).location})


def _audit(request: web.Request, action: str, user: str | None) -> None:
    audit = request.app.get(AUDIT)
    if audit is None:
        return
    try:
        audit.record(action, actor=user, remote=request.remote)
    except Exception:
        log.exception("could not write the audit record for %s", action)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/signin", signin_form, name="web_signin_form")
    r.add_post("/signin", signin, name="web_signin")
    r.add_post("/signout", signout, name="web_signout")
