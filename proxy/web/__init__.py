"""The web pages: server-rendered HTML (aiohttp-jinja2, autoescaped), readable without JavaScript.

``setup_web(app)`` adds them (nothing when ``web.enabled`` is false): the templates and
``/static/`` from this package, the sessions service, each page module's ``add_routes(app)``
(``PAGE_MODULES``), and the pages' middleware. Rules the middleware holds, for every path outside
the machine endpoints (``/v2/``, ``/api/``, ``/token``, ``/metrics``, ``/healthz``, ``/readyz``):
- every answer carries the security headers (``SECURITY_HEADERS``: a Content-Security-Policy
  without inline script or style, no framing, same-origin referrers, no sniffing);
- a failure is an HTML page (``error.html``) with its status (403, 404, 405, 409, 413, 422, 429
  with ``Retry-After``, 503), never JSON or a traceback; unknown paths get the 404 page;
- the service layer's refusals are translated here, once: a package or account not found is 404,
  a refused act 403, a conflict 409, a bad value 422, the database unavailable 503.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from proxy.errors import OCIError, Unauthorized
from proxy.http.keys import ACCOUNTS, CONFIG, DATABASE, WEB_SESSIONS
from proxy.registry.accounts import AccountError, NotFound as AccountNotFound
from proxy.registry.packages import InvalidRequest, PackageConflict, PackageNotFound, PackageRefused
from proxy.web import filters
from proxy.web.errors import PageError
from proxy.web.sessions import WebSessions

log = logging.getLogger("wharf.web")

HERE = Path(__file__).parent
# each page module has ``add_routes(app)``; helpers add their module's name here
PAGE_MODULES = (
    "signin",
    "packages_pages",
    "home",
    "tokens_pages", "admin_pages",
    "dashboard",
)
MACHINE_PREFIXES = ("/v2/", "/api/", "/_wharf/")  # /_wharf/: between replicas (proxy.http.peer)
MACHINE_PATHS = frozenset({"/v2", "/token", "/metrics", "/healthz", "/readyz"})
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Method not allowed", 409: "Conflict",
          413: "Too large", 415: "Unsupported form", 422: "Not valid", 429: "Too many attempts",
          500: "Something went wrong", 503: "Unavailable"}


def is_page(path: str) -> bool:
    """Whether ``path`` belongs to the pages (not to the registry, the API or the operators' endpoints)."""
    return not path.startswith(MACHINE_PREFIXES) and path not in MACHINE_PATHS


def setup_web(app: web.Application) -> None:
    """The pages, their static files, sessions and middleware; nothing when ``web.enabled`` is false."""
    config = app[CONFIG]
    if not config.web.enabled:
        return
    environment = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"),
                                       autoescape=jinja2.select_autoescape(default=True, default_for_string=True))
    environment.filters.update(filters.FILTERS)
    app[WEB_SESSIONS] = WebSessions(app[DATABASE], app[ACCOUNTS], config.web.session_hours)
    # next to the outermost middleware (observe), so refusals of the inner ones (the client rate
    # limit's 429) become pages too
    app.middlewares.insert(1, pages_middleware)
    app.router.add_static("/static/", HERE / "static", name="static", append_version=False)
    for name in PAGE_MODULES:
        importlib.import_module(f"proxy.web.{name}").add_routes(app)


async def error_page(request: web.Request, status: int, message: str,
                     headers: dict[str, str] | None = None) -> web.Response:
    """The HTML error page: its status, title and a sentence; with the nav of whoever is signed in."""
    from proxy.web.render import page  # render needs the sessions, which need nothing of this module

    try:
        response = await page(request, "error.html", {"status": status, "title": TITLES.get(status, "Error"),
                                                      "message": message}, status=status)
    except Exception:  # the page itself failed (e.g. the database is down): plain words, still HTML
        log.exception("could not render the error page for %s %s", request.method, request.path)
        response = web.Response(status=status, text=f"{status} {TITLES.get(status, 'Error')}: {message}\n",
                                content_type="text/plain")
    response.headers.update(headers or {})
    return response


def _refusal(error: Exception) -> tuple[int, str, dict[str, str]] | None:
    """The status, words and headers a refusal of the service layer is shown with."""
    if isinstance(error, PageError):
        return error.status, error.message, error.headers
    if isinstance(error, (PackageNotFound, AccountNotFound)):
        return 404, str(error) or "Not found.", {}
    if isinstance(error, PackageRefused):
        return 403, str(error), {}
    if isinstance(error, PackageConflict):
        return 409, str(error), {}
    if isinstance(error, (InvalidRequest, AccountError)):
        return 422, str(error), {}
    if isinstance(error, Unauthorized):
        return 403, "Sign in to do this.", {}
    if isinstance(error, OCIError):  # Denied 403, TooManyRequests 429 (with Retry-After) ...
        status = error.status if 400 <= error.status < 600 else 500
        return status, error.message, error.headers
    if isinstance(error, SQLAlchemyError):
        log.exception("database error on a page")
        return 503, "The database is unavailable; try again in a moment.", {}
    return None


_HTTP_WORDS = {404: "There is no page here.", 405: "This page does not take that method."}


@web.middleware
async def pages_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Security headers and HTML error pages for every page path (see the module docstring)."""
    if not is_page(request.path):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # the redirects pages raise (see_other)
            response = web.Response(status=exc.status, headers=exc.headers)
        else:
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            response = await error_page(request, exc.status, _HTTP_WORDS.get(exc.status, exc.reason), headers)
    except Exception as error:
        refusal = _refusal(error)
        if refusal is None:
            log.exception("unhandled error on %s %s", request.method, request.path)
            refusal = (500, "Something went wrong on our side; it was logged.", {})
        response = await error_page(request, *refusal)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
