"""Accounts for tests: a user and a personal access token in a Wharf's database."""

from __future__ import annotations

import base64
import hashlib
import time

from sqlalchemy import select

from proxy.registry.accounts import new_secret
from proxy.storage.database import Base, Database, Namespace, Org, OrgMember, Token, User, bump_revision

ALL_SCOPES = ("read:packages", "write:packages", "delete:packages")


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def add_user(db: Database, name: str, admin: bool = False) -> None:
    """Create the user unless it exists (several test apps may share one store)."""
    Base.metadata.create_all(db.engine)
    with db.session() as session:
        if session.get(Namespace, name) is not None:
            return
        session.add(Namespace(name=name, kind="user", created_at=time.time()))
        session.flush()
        session.add(User(name=name, admin=admin, created_at=time.time()))
        bump_revision(session)


def add_org(db: Database, name: str, members: dict[str, str]) -> None:
    with db.session() as session:
        session.add(Namespace(name=name, kind="org", created_at=time.time()))
        session.flush()
        org = Org(name=name, created_at=time.time())
        session.add(org)
        session.flush()
        for user, role in members.items():
            user_id = session.scalar(select(User.id).where(User.name == user))
            session.add(OrgMember(org_id=org.id, user_id=user_id, role=role))
        bump_revision(session)


def add_token(db: Database, user: str, scopes=ALL_SCOPES, expires_at: float | None = None) -> tuple[int, str]:
    secret = new_secret()  # the real format: Accounts.authenticate checks the checksum
    with db.session() as session:
        user_id = session.scalar(select(User.id).where(User.name == user))
        token = Token(user_id=user_id, secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
                      hint=secret[:14], scopes=",".join(sorted(scopes)), note="", created_at=time.time(),
                      expires_at=expires_at)
        session.add(token)
        session.flush()
        token_id = token.id
        bump_revision(session)
    return token_id, secret


def revoke(db: Database, token_id: int) -> None:
    with db.session() as session:
        session.get(Token, token_id).revoked_at = time.time()
        bump_revision(session)
