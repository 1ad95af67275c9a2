"""Credentials and auth challenges: what a client presents and what an upstream asks for."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_PARAM_RE = re.compile(r'([a-zA-Z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


@dataclass(frozen=True, slots=True)
class Credential:
    """A Basic user/password or an opaque Bearer token. ``id`` is a hash, safe to log and key by:
    keyed (HMAC) with ``id_key`` when one is given, so that a stored id cannot be tested against
    guessed passwords by whoever reads the store or Redis."""

    scheme: str  # "basic" or "bearer"
    secret: str = field(repr=False)  # base64(user:pass) for basic, the token for bearer
    id_key: bytes = field(default=b"", repr=False, compare=False)

    @property
    def id(self) -> str:
        data = f"{self.scheme}:{self.secret}".encode()
        if self.id_key:
            return hmac.new(self.id_key, data, hashlib.sha256).hexdigest()[:32]
        return hashlib.sha256(data).hexdigest()[:32]

    def header(self) -> str:
        return ("Basic " if self.scheme == "basic" else "Bearer ") + self.secret

    @classmethod
    def basic(cls, username: str, password: str) -> "Credential":
        return cls("basic", base64.b64encode(f"{username}:{password}".encode()).decode())

def credential_from_header(value: str | None) -> Credential | None:
    """Parse a client's Authorization header; anything unparseable counts as no credential."""
    if not value:
        return None
    scheme, _, secret = value.strip().partition(" ")
    scheme = scheme.lower()
    secret = secret.strip()
    if scheme in ("basic", "bearer") and secret:
        return Credential(scheme, secret)
    return None


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_challenge(header: str | None) -> Challenge | None:
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM_RE.finditer(rest)}
    return Challenge(scheme.lower(), params)


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the port filled in from the scheme; None if not one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def realm_trusted(realm: str, upstream_url: str, realm_hosts: tuple[str, ...] = ()) -> bool:
    """May Wharf send a credential to this token realm on behalf of this upstream?

    Yes when the realm is the upstream's own origin (same scheme, host and port), or names a
    ``realm_hosts`` entry: ``host:port`` matches that port, ``host`` alone the scheme's default
    port (443 for https). An ``https`` upstream never trusts an ``http`` realm.
    """
    theirs, own = _origin(realm), _origin(upstream_url)
    if theirs is None or own is None:
        return False
    if theirs == own:
        return True
    scheme, host, port = theirs
    if own[0] == "https" and scheme != "https":
        return False
    named = f"[{host}]" if ":" in host else host  # IPv6 hosts are written in brackets
    return f"{named}:{port}" in realm_hosts or (port == _DEFAULT_PORTS[scheme] and named in realm_hosts)
