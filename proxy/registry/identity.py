"""Who a request is from: Wharf accounts (personal access tokens, Wharf's signed tokens) or an
upstream credential passed through. The two never mix.

Rules:
- Basic ``user:wharf_pat_…`` (or ``Bearer wharf_pat_…``, as GitHub's API takes it): a Wharf account, checked against the database (the secret's hash,
  the owner, expiry, revocation). A personal access token is never used as an upstream credential;
  Basic carrying a Wharf secret elsewhere (the token as user name, a signed token as password) is
  refused as a bad sign-in, never passed upstream.
- Bearer tokens Wharf signed at ``/token`` for an account (JWT, HS256, ``iss: wharf``, short-lived):
  the account and the token they were issued from; they stand only while that token stands.
- Anything else (Basic with another password, Wharf's encrypted upstream tokens, other Bearer
  tokens) is an upstream credential, resolved as ``proxy.registry.tokens`` says; the principal is
  anonymous: an upstream credential never grants access to local packages.
- Answers are remembered per database revision: a revoked or expired token, a changed role, a
  deleted package is seen by every worker and replica within one poll (``POLL_SECONDS``) of the
  change, at once in the process that made it. Token expiry is checked on every use.
- Failed sign-ins are counted per client address and per user name; past
  ``access.login_failures`` within ``access.login_window_seconds`` each is refused with 429 and
  ``Retry-After`` until the window passes (``LoginThrottle``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import jwt

from proxy.config import AccessConfig
from proxy.errors import TooManyRequests, Unauthorized
from proxy.metrics import Metrics
from proxy.registry.access import ANONYMOUS, NamespaceFacts, PackageFacts, Principal
from proxy.registry.base import Client
from proxy.registry.tokens import TokenService
from proxy.storage.database import Database
from proxy.storage.shared import SharedCache
from proxy.upstream.auth import Credential

log = logging.getLogger("wharf.identity")

PAT_PREFIX = "wharf_pat_"
JWT_ISSUER = "wharf"
JWT_TTL = 300  # seconds a signed token from /token holds (Docker's default); clients fetch anew
POLL_SECONDS = 0.1
_MAX_REMEMBERED = 50_000
_TOUCH_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Remembered:
    principal: Principal | None
    expires_at: float | None  # of the token: refused from then on, whatever the cache holds


def jwt_key(token_key: bytes) -> bytes:
    """The HS256 key of Wharf's signed tokens: derived from the store's (or the configured) token
    key, so every worker and every replica that shares that key agrees."""
    return hmac.new(token_key, b"wharf jwt signing key", hashlib.sha256).digest()


class Identity:
    """Resolves Authorization headers into a ``Client``; remembers per database revision."""

    def __init__(self, db: Database, accounts: Any, tokens: TokenService, signing_key: bytes,
                 metrics: Metrics) -> None:
        self._db = db
        self._accounts = accounts
        self._tokens = tokens
        self._key = signing_key
        self._metrics = metrics
        self._revision: int | None = None
        self._principals: dict[tuple, _Remembered] = {}
        self._jwts: dict[str, tuple[str, int | None, float]] = {}  # token -> (user, token id, exp)
        self._packages: dict[str, PackageFacts | None] = {}
        self._namespaces: dict[str, NamespaceFacts] = {}
        self._used: dict[int, float] = {}
        self._touched = time.monotonic()
        self._listeners: list[Callable[[], Any]] = []

    # the revision ----------------------------------------------------------------------------
    def on_change(self, listener: Callable[[], Any]) -> None:
        """``listener()`` runs whenever the database revision moves (after the caches are dropped)."""
        self._listeners.append(listener)

    async def poll(self) -> bool:
        """Read the revision; drop everything remembered when it moved. True when it did."""
        revision = await self._db.run(self._db.revision)
        if revision == self._revision:
            await self._flush_used()
            return False
        first = self._revision is None
        self._revision = revision
        self.forget()
        if not first:
            for listener in self._listeners:
                result = listener()
                if hasattr(result, "__await__"):
                    await result
        return True

    def forget(self) -> None:
        """Drop every remembered principal, package and namespace (this process changed one)."""
        self._principals.clear()
        self._jwts.clear()
        self._packages.clear()
        self._namespaces.clear()

    async def changed(self) -> None:
        """This process changed something an access decision reads: act on it now, not at the next poll."""
        await self.poll()

    async def _flush_used(self) -> None:
        if self._used and time.monotonic() - self._touched >= _TOUCH_SECONDS:
            used, self._used = self._used, {}
            self._touched = time.monotonic()
            try:
                await self._db.run(self._accounts.touch_tokens, used)
            except Exception:
                log.exception("recording when tokens were last used failed")

    async def close(self) -> None:
        self._touched = float("-inf")
        await self._flush_used()

    # facts, remembered -----------------------------------------------------------------------
    async def package(self, repository: str, packages: Any) -> PackageFacts | None:
        if repository in self._packages:
            return self._packages[repository]
        facts = await self._db.run(packages.facts, repository)
        self._remember(self._packages, repository, facts)
        return facts

    async def namespace(self, name: str) -> NamespaceFacts:
        facts = self._namespaces.get(name)
        if facts is None:
            facts = await self._db.run(self._accounts.namespace, name)
            self._remember(self._namespaces, name, facts)
        return facts

    async def namespace_names(self) -> list[str]:
        return await self._db.run(self._accounts.namespaces)

    @staticmethod
    def _remember(table: dict, key: Any, value: Any) -> None:
        if len(table) >= _MAX_REMEMBERED:
            table.clear()
        table[key] = value

    # principals ------------------------------------------------------------------------------
    async def client(self, authorization: str | None) -> Client:
        """The caller behind an Authorization header (see the module docstring).

        Raises Unauthorized for a personal access token or a Wharf-signed token that does not
        stand (wrong, revoked, expired); the sign-in throttle is the caller's (``LoginThrottle``).
        """
        if not authorization:
            return Client()
        scheme, _, secret = authorization.strip().partition(" ")
        scheme, secret = scheme.lower(), secret.strip()
        if scheme == "basic":
            user, password = decode_basic(secret)
            if password is not None and password.startswith(PAT_PREFIX):
                principal = await self.authenticate(user or "", password)
                if principal is None:
                    raise Unauthorized("invalid user name or token")
                return Client(None, principal)
            if misplaced_wharf_secret(user, password):
                raise Unauthorized("a Wharf token goes in the password, after the user's name")
        elif scheme == "bearer" and secret.startswith(PAT_PREFIX):  # the API's "Bearer <token>"
            principal = await self.authenticate(None, secret)
            if principal is None:
                raise Unauthorized("invalid token")
            return Client(None, principal)
        elif scheme == "bearer" and _looks_like_wharf_jwt(secret):
            return Client(None, await self._from_jwt(secret))
        credential = await self._tokens.resolve(Credential(scheme, secret) if scheme in ("basic", "bearer")
                                                and secret else None)
        return Client(credential, ANONYMOUS)

    def expiry_of(self, authorization: str) -> float | None:
        """When the credential of an Authorization header this process just accepted stops standing
        (a signed token's ``exp``, a personal access token's expiry; None: never). Only asked after
        ``client`` accepted the header, so its facts are remembered."""
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() == "bearer" and secret in self._jwts:
            user, token_id, exp = self._jwts[secret]
            remembered = self._principals.get(("jwt", user, token_id))
            token_expiry = remembered.expires_at if remembered is not None else None
            return exp if token_expiry is None else min(exp, token_expiry)
        if scheme.lower() == "basic":
            user, password = decode_basic(secret)
        else:
            user, password = None, secret
        if password is None:
            return time.time()  # not a credential this process knows: hold it for no time
        remembered = self._principals.get(("pat", user, hashlib.sha256(password.encode()).digest()))
        if remembered is None or remembered.principal is None:
            return time.time()
        return remembered.expires_at

    def remembers(self, user: str | None, secret: str) -> bool:
        """Whether this user name and token are known good here (the sign-in throttle skips them)."""
        remembered = self._principals.get(("pat", user, hashlib.sha256(secret.encode()).digest()))
        return remembered is not None and remembered.principal is not None

    async def authenticate(self, user: str | None, secret: str) -> Principal | None:
        """The account a user name (None: whoever owns it) and personal access token stand for, or None."""
        key = ("pat", user, hashlib.sha256(secret.encode()).digest())
        remembered = self._principals.get(key)
        if remembered is None:
            principal = await self._db.run(self._accounts.authenticate, user, secret)
            remembered = _Remembered(principal, principal.expires_at if principal else None)
            self._remember(self._principals, key, remembered)
        return self._standing(remembered)

    def _standing(self, remembered: _Remembered) -> Principal | None:
        principal = remembered.principal
        if principal is None:
            return None
        if remembered.expires_at is not None and time.time() >= remembered.expires_at:
            return None
        if principal.token_id is not None:
            self._used[principal.token_id] = time.time()
        return principal

    async def _from_jwt(self, token: str) -> Principal:
        claims = self._jwts.get(token)
        if claims is None or claims[2] <= time.time():
            try:
                decoded = jwt.decode(token, self._key, algorithms=["HS256"], issuer=JWT_ISSUER, audience="wharf",
                                     options={"require": ["exp", "iat", "sub", "iss"]})
            except jwt.PyJWTError as error:
                raise Unauthorized(f"the token is not valid: {error}") from None
            tid = decoded.get("tid")
            claims = (str(decoded["sub"]), tid if isinstance(tid, int) else None, float(decoded["exp"]))
            self._remember(self._jwts, token, claims)
        user, token_id, _ = claims
        key = ("jwt", user, token_id)
        remembered = self._principals.get(key)
        if remembered is None:
            principal = await self._db.run(self._accounts.principal, user, token_id)
            remembered = _Remembered(principal, principal.expires_at if principal else None)
            self._remember(self._principals, key, remembered)
        principal = self._standing(remembered)
        if principal is None:
            raise Unauthorized("the token this sign-in came from was revoked or has expired")
        return principal

    def sign(self, principal: Principal, access: Iterable[dict]) -> tuple[str, int]:
        """A signed token for ``principal`` naming the granted ``access`` (Docker's claim shape)."""
        now = int(time.time())
        claims = {"iss": JWT_ISSUER, "sub": principal.user, "iat": now, "nbf": now - 5, "exp": now + JWT_TTL,
                  "aud": "wharf", "tid": principal.token_id, "access": list(access)}
        return jwt.encode(claims, self._key, algorithm="HS256"), JWT_TTL


def decode_basic(secret: str) -> tuple[str | None, str | None]:
    """``(user, password)`` of a Basic credential; ``(None, None)`` when it does not decode."""
    try:
        user, sep, password = base64.b64decode(secret, validate=True).decode().partition(":")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None, None
    return (user, password) if sep else (None, None)


def misplaced_wharf_secret(user: str | None, password: str | None) -> bool:
    """Whether a Basic credential carries a Wharf secret other than as ``user:wharf_pat_…`` (a
    personal access token as the user name, a Wharf-signed token as the password): it is refused,
    never passed upstream."""
    return bool(user and user.startswith(PAT_PREFIX)) or bool(password and _looks_like_wharf_jwt(password))


def _looks_like_wharf_jwt(token: str) -> bool:
    """A JWT whose unverified issuer is Wharf (other Bearer tokens are passed through upstream)."""
    if token.count(".") != 2 or not token.startswith("eyJ"):
        return False
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("iss") == JWT_ISSUER
    except jwt.PyJWTError:
        return False


class LoginThrottle:
    """Failed sign-ins per client address and per user name, shared by the workers and replicas."""

    def __init__(self, shared: SharedCache, config: AccessConfig, metrics: Metrics) -> None:
        self._shared = shared
        self._limit = config.login_failures
        self._window = config.login_window_seconds
        self._metrics = metrics

    def _keys(self, address: str | None, user: str | None) -> list[str]:
        keys = [f"loginfail:addr:{address or '-'}"]
        if user:
            keys.append(f"loginfail:user:{hashlib.sha256(user.encode()).hexdigest()[:32]}")
        return keys

    async def check(self, address: str | None, user: str | None) -> None:
        """Raise TooManyRequests (with Retry-After) while either count is at the limit."""
        for key in self._keys(address, user):
            record = await self._shared.get(key)
            if record and record[0] >= self._limit:
                retry = max(1, int(record[1] + self._window - time.time()) + 1)
                self._metrics.login_throttled.inc()
                raise TooManyRequests(f"too many failed sign-ins; try again in {retry} s",
                                      headers={"Retry-After": str(retry)})

    async def failed(self, address: str | None, user: str | None, reason: str) -> None:
        self._metrics.login_failures.labels(reason).inc()
        now = time.time()
        for key in self._keys(address, user):
            record = await self._shared.get(key)
            if not record or record[1] + self._window <= now:
                record = (0, now)
            await self._shared.set(key, (record[0] + 1, record[1]), self._window)
