"""Users, organisations and personal access tokens: the accounts service.

Rules:
- a user's or organisation's name is one repository path component (the distribution grammar),
  at most 39 characters (GitHub's limit), never ``library`` (docker.io's official images) nor a
  name clients use for an upstream; users and organisations share one space of names;
- a token is ``wharf_pat_`` + 36 random base62 characters + 6 base62 characters of the CRC32 of
  those 36 (GitHub's format, so secret scanners find them and check them offline); only its
  SHA-256 is stored, beside a hint (its first 14 characters) to tell tokens apart;
- a token is accepted only for its own user, before its expiry and until it is revoked; a check
  looks the token up by its hash and compares in constant time;
- every change writes an audit record and bumps the database revision, so every worker and
  replica drops what it remembered (a revoked token is refused at once everywhere); marking a
  token used is not a change. The record is written in the change's transaction, after its
  rows are flushed: a change whose record cannot be written is rolled back, never unaudited.

The methods block: async callers go through ``Database.run``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from proxy.oci.names import is_name_component
from proxy.registry.access import SCOPES, NamespaceFacts, Principal
from proxy.registry.audit import AuditLog, iso_time
from proxy.storage.database import Database, Namespace, Org, OrgMember, Token, User, bump_revision

TOKEN_PREFIX = "wharf_pat_"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase  # the usual base62 order
_RANDOM_LENGTH = 36
_CHECKSUM_LENGTH = 6
TOKEN_LENGTH = len(TOKEN_PREFIX) + _RANDOM_LENGTH + _CHECKSUM_LENGTH
_HINT_LENGTH = 14
MAX_NAME_LENGTH = 39
MAX_NOTE_LENGTH = 1000
MAX_EXPIRY_DAYS = 36500
ORG_ROLES = ("owner", "member")
CLI = "cli"  # the actor of changes an operator makes at the console


class AccountError(ValueError):
    """A request the accounts cannot carry out; the message says why, in words for the user."""


class NotFound(AccountError):
    """No such user, organisation or token."""


class Conflict(AccountError):
    """The name is taken, or another rule of the current state forbids the change."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    name: str
    admin: bool
    created_at: float
    orgs: Mapping[str, str] = field(default_factory=dict)  # organisation -> role (owner | member)


@dataclass(frozen=True, slots=True)
class OrgInfo:
    id: int
    name: str
    created_at: float
    members: Mapping[str, str] = field(default_factory=dict)  # user -> role (owner | member)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown of a token: never its secret, nor its hash."""

    id: int
    user: str
    hint: str
    scopes: tuple[str, ...]
    note: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None

    def state(self, now: float) -> str:
        """active | expired | revoked."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


# the token format ------------------------------------------------------------------------------
def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits)).rjust(width, "0")


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode()), _CHECKSUM_LENGTH)


def new_secret() -> str:
    """A fresh token: prefix, 36 random base62 characters (214 bits), their checksum."""
    random_part = "".join(secrets.choice(_BASE62) for _ in range(_RANDOM_LENGTH))
    return TOKEN_PREFIX + random_part + _checksum(random_part)


def looks_like_token(secret: str) -> bool:
    """Whether ``secret`` has the token's shape and a checksum that matches (no database needed)."""
    if len(secret) != TOKEN_LENGTH or not secret.startswith(TOKEN_PREFIX):
        return False
    body = secret[len(TOKEN_PREFIX):]
    if any(c not in _BASE62 for c in body):
        return False
    random_part, checksum = body[:_RANDOM_LENGTH], body[_RANDOM_LENGTH:]
    return hmac.compare_digest(_checksum(random_part), checksum)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(scopes: Iterable[str] | str) -> tuple[str, ...]:
    """Scopes as a sorted tuple; a list or a comma-separated string. At least one, all known."""
    if isinstance(scopes, str):
        scopes = scopes.split(",")
    wanted = {scope.strip() for scope in scopes if scope.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise AccountError(f"unknown scope(s) {', '.join(unknown)}; scopes are {', '.join(SCOPES)}")
    if not wanted:
        raise AccountError(f"a token needs at least one scope of {', '.join(SCOPES)}")
    return tuple(sorted(wanted))


# the service -----------------------------------------------------------------------------------
class Accounts:
    """Users, organisations and tokens in ``db``; ``reserved`` are names users and organisations may
    not take (the upstreams' names and aliases)."""

    def __init__(self, db: Database, audit: AuditLog, reserved: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.audit = audit
        self.reserved = frozenset(reserved)
        self.clock = clock

    # users and organisations -------------------------------------------------------------------
    def check_name(self, name: str) -> None:
        """Raise AccountError unless ``name`` may become a user's or an organisation's."""
        if not isinstance(name, str) or not is_name_component(name):
            raise AccountError(f"{name!r} is not a valid name: lowercase letters and digits, "
                               f"separated by '.', '_', '__' or '-'")
        if len(name) > MAX_NAME_LENGTH:
            raise AccountError(f"{name!r} is longer than {MAX_NAME_LENGTH} characters")
        if name == "library":
            raise AccountError("library/ is where docker.io keeps its official images; it is never local")
        if name in self.reserved:
            raise AccountError(f"{name!r} is the name of an upstream registry here")

    def _claim(self, session: Session, name: str, kind: str, now: float) -> None:
        """Take ``name`` in the namespaces table (users and organisations share it)."""
        self.check_name(name)
        taken = session.get(Namespace, name)
        if taken is not None:
            raise Conflict(f"{name!r} is taken (by a{'n organisation' if taken.kind == 'org' else ' user'})")
        session.add(Namespace(name=name, kind=kind, created_at=now))
        session.flush()

    def add_user(self, name: str, admin: bool = False, *, actor: str | None = CLI,
                 remote: str | None = None) -> UserInfo:
        now = self.clock()
        try:
            with self.db.session() as session:
                self._claim(session, name, "user", now)
                user = User(name=name, admin=bool(admin), created_at=now)
                session.add(user)
                bump_revision(session)
                session.flush()
                info = UserInfo(user.id, user.name, user.admin, user.created_at)
                self.audit.record("user.add", actor, remote, user=name, admin=info.admin)
        except IntegrityError:  # another process took the name between our check and our insert
            raise Conflict(f"{name!r} is taken") from None
        return info

    def user(self, name: str) -> UserInfo:
        with self.db.session() as session:
            user = self._user(session, name)
            return UserInfo(user.id, user.name, user.admin, user.created_at, self._orgs_of(session, user.id))

    def list_users(self) -> list[UserInfo]:
        with self.db.session() as session:
            roles: dict[int, dict[str, str]] = {}
            for user_id, org, role in session.execute(
                    select(OrgMember.user_id, Org.name, OrgMember.role).join(Org, Org.id == OrgMember.org_id)):
                roles.setdefault(user_id, {})[org] = role
            return [UserInfo(u.id, u.name, u.admin, u.created_at, dict(sorted(roles.get(u.id, {}).items())))
                    for u in session.scalars(select(User).order_by(User.name))]

    def add_org(self, name: str, owner: str, *, actor: str | None = CLI, remote: str | None = None) -> OrgInfo:
        now = self.clock()
        try:
            with self.db.session() as session:
                user = self._user(session, owner)
                self._claim(session, name, "org", now)
                org = Org(name=name, created_at=now)
                session.add(org)
                session.flush()
                session.add(OrgMember(org_id=org.id, user_id=user.id, role="owner"))
                bump_revision(session)
                info = OrgInfo(org.id, org.name, org.created_at, {owner: "owner"})
                session.flush()
                self.audit.record("org.add", actor, remote, org=name, owner=owner)
        except IntegrityError:
            raise Conflict(f"{name!r} is taken") from None
        return info

    def add_member(self, org: str, user: str, role: str = "member", *, actor: str | None = CLI,
                   remote: str | None = None) -> OrgInfo:
        """Make ``user`` a member of ``org`` with ``role``; a member's role changes to ``role``.

        An organisation keeps at least one owner.
        """
        if role not in ORG_ROLES:
            raise AccountError(f"unknown role {role!r}; an organisation member's role is owner or member")
        with self.db.session() as session:
            org_row = self._org(session, org)
            user_row = self._user(session, user)
            member = session.get(OrgMember, (org_row.id, user_row.id))
            before = member.role if member is not None else None
            if before == role:
                return self._org_info(session, org_row)
            if before == "owner" and self._owners(session, org_row.id) == 1:
                raise Conflict(f"{user} is the last owner of {org}; make another member owner first")
            if member is None:
                session.add(OrgMember(org_id=org_row.id, user_id=user_row.id, role=role))
            else:
                member.role = role
            bump_revision(session)
            session.flush()
            info = self._org_info(session, org_row)
            self.audit.record("org.member", actor, remote, org=org, user=user, role=role, previous_role=before)
        return info

    def org(self, name: str) -> OrgInfo:
        with self.db.session() as session:
            return self._org_info(session, self._org(session, name))

    def list_orgs(self) -> list[OrgInfo]:
        with self.db.session() as session:
            return [self._org_info(session, org) for org in session.scalars(select(Org).order_by(Org.name))]

    def namespace(self, name: str) -> NamespaceFacts:
        """Whose ``name`` is: a user's, an organisation's, or nobody's (kind None)."""
        with self.db.session() as session:
            row = session.get(Namespace, name)
            return NamespaceFacts(name, row.kind if row is not None else None)

    def namespaces(self) -> list[str]:
        """Every user's and organisation's name: the namespaces that are local."""
        with self.db.session() as session:
            return list(session.scalars(select(Namespace.name).order_by(Namespace.name)))

    # tokens ------------------------------------------------------------------------------------
    def create_token(self, user: str, scopes: Iterable[str] | str, expires_days: int | None = None,
                     note: str = "", *, actor: str | None = CLI,
                     remote: str | None = None, not_after: float | None = None) -> tuple[TokenInfo, str]:
        """A new token for ``user``: its facts and its secret (shown once, never stored).

        ``not_after``: when the token creating this one expires; the new one may not outlive it (a
        leaked short-lived token cannot mint a lasting one)."""
        chosen = parse_scopes(scopes)
        if expires_days is not None and (isinstance(expires_days, bool) or not isinstance(expires_days, int)
                                         or not 1 <= expires_days <= MAX_EXPIRY_DAYS):
            raise AccountError(f"expiry must be a whole number of days from 1 to {MAX_EXPIRY_DAYS}")
        if not isinstance(note, str) or len(note) > MAX_NOTE_LENGTH:
            raise AccountError(f"a note is text of at most {MAX_NOTE_LENGTH} characters")
        now = self.clock()
        if not_after is not None and (expires_days is None or now + expires_days * 86400 > not_after):
            days_left = max(0, int((not_after - now) // 86400))
            raise AccountError("a token cannot outlive the token that creates it, which expires in "
                               + (f"{days_left} day(s): choose at most {days_left}" if days_left else
                                  "less than a day: sign in with a longer-lived token to create one"))
        secret = new_secret()
        with self.db.session() as session:
            owner = self._user(session, user)
            token = Token(user_id=owner.id, secret_hash=secret_hash(secret), hint=secret[:_HINT_LENGTH],
                          scopes=",".join(chosen), note=note, created_at=now,
                          expires_at=now + expires_days * 86400 if expires_days is not None else None)
            session.add(token)
            bump_revision(session)
            session.flush()
            info = _token_info(token, owner.name)
            self.audit.record("token.create", actor, remote, user=user, token_id=info.id, hint=info.hint,
                              scopes=list(chosen), note=note,
                              expires_at=iso_time(info.expires_at) if info.expires_at is not None else None)
        return info, secret

    def list_tokens(self, user: str) -> list[TokenInfo]:
        with self.db.session() as session:
            owner = self._user(session, user)
            return [_token_info(token, owner.name) for token in
                    session.scalars(select(Token).where(Token.user_id == owner.id).order_by(Token.id))]

    def token(self, token_id: int) -> TokenInfo:
        with self.db.session() as session:
            row = session.execute(select(Token, User.name).join(User, User.id == Token.user_id)
                                  .where(Token.id == token_id)).first()
            if row is None:
                raise NotFound(f"no token with id {token_id}")
            return _token_info(row[0], row[1])

    def revoke_token(self, token_id: int, *, user: str | None = None, actor: str | None = CLI,
                     remote: str | None = None) -> TokenInfo:
        """Revoke the token (when ``user`` is given, only one of theirs); revoking twice is no change."""
        with self.db.session() as session:
            row = session.execute(select(Token, User.name).join(User, User.id == Token.user_id)
                                  .where(Token.id == token_id)).first()
            if row is None or (user is not None and row[1] != user):
                raise NotFound(f"no token with id {token_id}" + (f" of {user}" if user is not None else ""))
            token, owner = row
            if token.revoked_at is not None:
                return _token_info(token, owner)
            token.revoked_at = self.clock()
            bump_revision(session)
            session.flush()
            info = _token_info(token, owner)
            self.audit.record("token.revoke", actor, remote, user=owner, token_id=info.id, hint=info.hint)
        return info

    def authenticate(self, user: str | None, secret: str) -> Principal | None:
        """The principal ``user`` acts as with token ``secret``, or None when the token is malformed,
        unknown, another user's, revoked or expired. ``user`` None: whoever owns the token (a
        ``Bearer`` token names no user)."""
        if not isinstance(secret, str) or not looks_like_token(secret):
            return None
        digest = secret_hash(secret)
        with self.db.session() as session:
            row = session.execute(select(Token, User).join(User, User.id == Token.user_id)
                                  .where(Token.secret_hash == digest)).first()
            if row is None or not hmac.compare_digest(row[0].secret_hash, digest):
                return None
            return self._principal(session, row[0], row[1], user)

    def principal(self, user: str, token_id: int) -> Principal | None:
        """The principal of a signed token naming ``user`` and ``token_id``: None once that token was
        revoked or expired (or is not that user's)."""
        with self.db.session() as session:
            row = session.execute(select(Token, User).join(User, User.id == Token.user_id)
                                  .where(Token.id == token_id)).first()
            if row is None:
                return None
            return self._principal(session, row[0], row[1], user)

    def touch_tokens(self, used: Mapping[int, float]) -> None:
        """Record when tokens were last used (a batch, flushed every few seconds); no revision bump:
        nothing an access decision reads changes."""
        if not used:
            return
        table = Token.__table__
        statement = (update(table).where(table.c.id == bindparam("token_id"))
                     .where(or_(table.c.last_used_at.is_(None), table.c.last_used_at < bindparam("used")))
                     .values(last_used_at=bindparam("used")))
        with self.db.session() as session:
            session.connection().execute(statement, [{"token_id": token_id, "used": when}
                                                     for token_id, when in sorted(used.items())])

    # helpers -----------------------------------------------------------------------------------
    def _principal(self, session: Session, token: Token, owner: User, user: str | None) -> Principal | None:
        if (user is not None and owner.name != user) or token.revoked_at is not None:
            return None
        if token.expires_at is not None and token.expires_at <= self.clock():
            return None
        return Principal(user=owner.name, user_id=owner.id, admin=owner.admin,
                         scopes=frozenset(s for s in token.scopes.split(",") if s), token_id=token.id,
                         orgs=self._orgs_of(session, owner.id), expires_at=token.expires_at)

    @staticmethod
    def _user(session: Session, name: str) -> User:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise NotFound(f"no user {name!r}")
        return user

    @staticmethod
    def _org(session: Session, name: str) -> Org:
        org = session.scalar(select(Org).where(Org.name == name))
        if org is None:
            raise NotFound(f"no organisation {name!r}")
        return org

    @staticmethod
    def _orgs_of(session: Session, user_id: int) -> dict[str, str]:
        return dict(session.execute(select(Org.name, OrgMember.role).join(Org, Org.id == OrgMember.org_id)
                                    .where(OrgMember.user_id == user_id).order_by(Org.name)).all())

    @staticmethod
    def _owners(session: Session, org_id: int) -> int:
        return len(session.scalars(select(OrgMember.user_id).where(OrgMember.org_id == org_id,
                                                                   OrgMember.role == "owner")).all())

    @staticmethod
    def _org_info(session: Session, org: Org) -> OrgInfo:
        members = dict(session.execute(select(User.name, OrgMember.role).join(User, User.id == OrgMember.user_id)
                                       .where(OrgMember.org_id == org.id).order_by(User.name)).all())
        return OrgInfo(org.id, org.name, org.created_at, members)


def _token_info(token: Token, user: str) -> TokenInfo:
    return TokenInfo(id=token.id, user=user, hint=token.hint,
                     scopes=tuple(s for s in token.scopes.split(",") if s), note=token.note,
                     created_at=token.created_at, expires_at=token.expires_at,
                     last_used_at=token.last_used_at, revoked_at=token.revoked_at)
