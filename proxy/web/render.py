"""Writing a page: ``page(request, template, context)`` renders a template with what every page
needs, ``see_other(request, location, done)`` is the redirect after a successful POST.

Every template sees ``viewer`` (the Principal: ``viewer.signed_in``, ``viewer.user``,
``viewer.admin``), ``csrf_token`` (the session's, for ``<input type="hidden" name="csrf">``; empty
when nobody is signed in), ``base_url`` (``public_url``, else the request's scheme and host),
``host`` (what clients put before a repository name), ``nav`` (the current section) and ``done``
(the notice after a redirect: the text of one of ``NOTICES``, never words from the request).
Pages vary per viewer: they are never cached (``Cache-Control: no-store``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from yarl import URL

from proxy.http.keys import CONFIG
from proxy.web.sessions import session_of, viewer_of

# the notices a redirect may ask for (``?done=KEY``); a page module adds its own keys here
NOTICES = {
    "signed_in": "You are signed in.",
    "signed_out": "You are signed out.",
    "version_deleted": "The version was deleted. It can be restored for a while from the deleted versions.",
    "version_restored": "The version was restored.",
    "visibility_changed": "The package's visibility was changed.",
    "visibility_not_public": ("The package is no longer public. Copies pulled while it was public may exist "
                              "outside Wharf; this change does not reach them."),
    "token_created": "The token was created.",
    "token_revoked": "The token was revoked.",
    "user_created": "The user was created.",
    "org_created": "The organisation was created.",
    "member_changed": "The membership was changed.",
    "cache_purged": "The cached content was purged.",
    "cache_warmed": "The images are being fetched into the cache.",
}


def base_url(request: web.Request) -> str:
    """How browsers and clients reach this Wharf: ``public_url``, else this request's scheme and host."""
    return (request.app[CONFIG].public_url or f"{request.scheme}://{request.host}").rstrip("/")


def registry_host(request: web.Request) -> str:
    """The host (and port) clients put before a repository name (``docker pull HOST/name``)."""
    return urlsplit(base_url(request)).netloc


def _section(request: web.Request) -> str:
    first = request.path.strip("/").split("/", 1)[0]
    return first or "home"


async def page(request: web.Request, template: str, context: dict | None = None, *,
               status: int = 200) -> web.Response:
    """``template`` rendered for this request's viewer (see the module docstring for what it sees)."""
    session = await session_of(request)
    done = request.query.get("done")
    values = {"viewer": await viewer_of(request), "csrf_token": session.csrf if session else "",
              "base_url": base_url(request), "host": registry_host(request), "nav": _section(request),
              "done": NOTICES.get(done) if done else None, **(context or {})}
    response = aiohttp_jinja2.render_template(template, request, values, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def see_other(request: web.Request, location: str, done: str | None = None) -> web.HTTPSeeOther:
    """The 303 to ``location`` (a path of this site) after a successful POST, asking it to show the
    notice ``done`` (a key of ``NOTICES``). Raise or return it."""
    if not location.startswith("/") or location.startswith("//"):
        raise ValueError(f"see_other goes to a path of this site, not {location!r}")
    if done is not None:
        if done not in NOTICES:
            raise ValueError(f"no notice {done!r}")
        location = str(URL(location).update_query(done=done))
    return web.HTTPSeeOther(location)
