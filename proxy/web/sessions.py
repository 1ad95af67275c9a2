"""Signed-in browsers: the session cookie, who it stands for, and the forms' CSRF check.

Rules:
- a session is made by signing in (``proxy.web.signin``) and only then: its id is 32 random bytes
  (``secrets.token_urlsafe``), new on every sign-in, so a cookie presented before sign-in (planted
  by someone else) is never promoted; the database keeps the SHA-256 of the id, never the id, and
  the token's id, never its secret;
- a session stands while it is younger than ``web.session_hours`` and the token it signed in with
  stands (not revoked, not expired, its user still there): it is asked on every request, so a
  revocation ends the session at once; a session that no longer stands is deleted;
- the cookie is HttpOnly, SameSite=Lax, path ``/``, Secure per ``web.cookie_secure`` (unset: when
  Wharf serves TLS or ``public_url`` is https);
- every state-changing form is POSTed with the session's CSRF token (``csrf``), compared in
  constant time, and, when the browser says where it comes from (``Origin``, ``Sec-Fetch-Site``),
  from this site only; anything else is refused with a 403 page and changes nothing;
- pages never read Authorization headers: a browser is who its session says, else anonymous.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from sqlalchemy import delete, select
from yarl import URL

from proxy.config import Config
from proxy.http.keys import CONFIG, DATABASE, WEB_SESSIONS
from proxy.registry.access import ANONYMOUS, Principal
from proxy.storage.database import Database, User, WebSession
from proxy.web.errors import PageError

COOKIE = "wharf_session"
MAX_FORM_BYTES = 64 * 1024
_MAX_COOKIE = 128  # an id is 43 characters; anything much longer is not one


@dataclass(frozen=True, slots=True)
class Session:
    """A standing session: the hash of its id, its forms' token, and who it stands for."""

    id_hash: str
    csrf: str
    principal: Principal
    expires_at: float


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class WebSessions:
    """The sessions table (blocking calls: go through ``Database.run``)."""

    def __init__(self, db: Database, accounts: Any, session_hours: float) -> None:
        self._db = db
        self._accounts = accounts
        self._seconds = session_hours * 3600

    @property
    def seconds(self) -> float:
        return self._seconds

    def start(self, principal: Principal, replacing: str | None = None) -> tuple[str, Session]:
        """A new session for ``principal`` (signed in with a token); ``replacing``, the id of the
        session the browser held before, ends. Expired sessions are cleared on the way."""
        if principal.user_id is None or principal.token_id is None:
            raise ValueError("a web session is for a user signed in with a token")
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        record = WebSession(id_hash=_hash(session_id), user_id=principal.user_id, token_id=principal.token_id,
                            csrf=secrets.token_urlsafe(32), created_at=now, expires_at=now + self._seconds)
        with self._db.session() as s:
            s.execute(delete(WebSession).where(WebSession.expires_at <= now))
            if replacing:
                s.execute(delete(WebSession).where(WebSession.id_hash == _hash(replacing)))
            s.add(record)
        return session_id, Session(record.id_hash, record.csrf, principal, record.expires_at)

    def find(self, session_id: str) -> Session | None:
        """The session with that id while it stands (see the module's rules); one that no longer
        does is deleted."""
        id_hash = _hash(session_id)
        with self._db.session() as s:
            row = s.execute(select(WebSession, User.name).join(User, User.id == WebSession.user_id)
                            .where(WebSession.id_hash == id_hash)).first()
            if row is None:
                return None
            record, user = row
            if not hmac.compare_digest(record.id_hash, id_hash):
                return None
            principal = None
            if record.expires_at > time.time():
                principal = self._accounts.principal(user, record.token_id)
            if principal is None:
                s.delete(record)
                return None
            return Session(record.id_hash, record.csrf, principal, record.expires_at)

    def end(self, session_id: str) -> None:
        with self._db.session() as s:
            s.execute(delete(WebSession).where(WebSession.id_hash == _hash(session_id)))


# per request --------------------------------------------------------------------------------------
_SESSION = web.RequestKey("web_session", object)  # Session | None, looked up once per request


async def session_of(request: web.Request) -> Session | None:
    """The request's standing session (looked up once), else None."""
    if _SESSION in request:
        return request[_SESSION]
    found = None
    cookie = request.cookies.get(COOKIE)
    if cookie and len(cookie) <= _MAX_COOKIE:
        found = await request.app[DATABASE].run(request.app[WEB_SESSIONS].find, cookie)
    request[_SESSION] = found
    return found


def remember_session(request: web.Request, session: Session | None) -> None:
    """What the rest of this request sees as its session (after sign-in or sign-out)."""
    request[_SESSION] = session


async def viewer_of(request: web.Request) -> Principal:
    """The signed-in browser's principal, else ``ANONYMOUS``."""
    session = await session_of(request)
    return ANONYMOUS if session is None else session.principal


def cookie_secure(config: Config) -> bool:
    """The session cookie's Secure flag: ``web.cookie_secure``, else whether browsers reach Wharf over TLS."""
    if config.web.cookie_secure is not None:
        return config.web.cookie_secure
    return config.tls.cert is not None or (config.public_url or "").startswith("https://")


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
               max_age: float | None = None, samesite: str = "Lax") -> None:
    """A cookie as every cookie of the pages is set: HttpOnly, SameSite, path /, Secure as configured."""
    response.set_cookie(name, value, path="/", httponly=True, samesite=samesite,
                        secure=cookie_secure(request.app[CONFIG]),
                        max_age=None if max_age is None else int(max_age))


def clear_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/", secure=cookie_secure(request.app[CONFIG]), httponly=True, samesite="Lax")


# forms --------------------------------------------------------------------------------------------
def same_site(request: web.Request) -> bool:
    """Whether the browser, when it says so, sent this request from one of this site's pages."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    ours = {f"{request.scheme}://{request.host}".lower()}
    public = request.app[CONFIG].public_url
    if public:
        url = URL(public)
        ours.add(str(url.origin()).lower())
    return origin.rstrip("/").lower() in ours


async def read_form(request: web.Request) -> MultiDictProxy:
    """The POSTed form (URL-encoded, at most ``MAX_FORM_BYTES``), from this site; else a 403, 413 or
    415 page."""
    if not same_site(request):
        raise PageError(403, "This form was sent from another site; nothing was changed.")
    if request.content_type != "application/x-www-form-urlencoded":
        raise PageError(415, "Forms are sent URL-encoded.")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise PageError(413, "The form is too large.")
    body = bytearray()
    while chunk := await request.content.read(MAX_FORM_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PageError(413, "The form is too large.")
    try:
        fields = parse_qsl(bytes(body).decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        raise PageError(422, "The form could not be read.") from None
    return MultiDictProxy(MultiDict(fields))


async def posted_form(request: web.Request) -> MultiDictProxy:
    """The POSTed form of a signed-in browser once its CSRF token is the session's and it comes from
    this site; else a 403 page (nothing is changed). Every state-changing page handler starts here."""
    form = await read_form(request)
    session = await session_of(request)
    if session is None:
        raise PageError(403, "Sign in first: this form needs a signed-in session; nothing was changed.")
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise PageError(403, "This form has expired or was not sent from this site; reload the page and "
                             "try again. Nothing was changed.")
    return form
