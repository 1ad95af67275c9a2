"""Stand-ins for the accounts and packages services while they land (removed at their merge)."""

from __future__ import annotations

import hashlib
import hmac
import time

from sqlalchemy import select, update

from proxy.registry.access import NamespaceFacts, PackageFacts, Principal, Role
from proxy.storage.database import (Base, Database, Namespace, Org, OrgMember, Package, PackageRole, Token, User,
                                    bump_revision)


class Accounts:
    def __init__(self, db: Database, audit=None, reserved=frozenset()) -> None:
        self._db = db
        Base.metadata.create_all(db.engine)

    def _principal(self, session, user: User, token: Token) -> Principal:
        orgs = {o.name: m.role for m, o in session.execute(
            select(OrgMember, Org).join(Org, Org.id == OrgMember.org_id).where(OrgMember.user_id == user.id))}
        return Principal(user.name, user.id, user.admin, frozenset(token.scopes.split(",")), token.id, orgs,
                         token.expires_at)

    def authenticate(self, user: str, secret: str) -> Principal | None:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        with self._db.session() as session:
            token = session.scalar(select(Token).where(Token.secret_hash == digest))
            if token is None or not hmac.compare_digest(token.secret_hash, digest) or token.revoked_at:
                return None
            owner = session.get(User, token.user_id)
            if owner is None or owner.name != user:
                return None
            if token.expires_at is not None and token.expires_at <= time.time():
                return None
            return self._principal(session, owner, token)

    def principal(self, user: str, token_id: int | None) -> Principal | None:
        with self._db.session() as session:
            token = session.get(Token, token_id) if token_id is not None else None
            owner = session.scalar(select(User).where(User.name == user))
            if token is None or owner is None or token.user_id != owner.id or token.revoked_at:
                return None
            return self._principal(session, owner, token)

    def touch_tokens(self, used: dict[int, float]) -> None:
        with self._db.session() as session:
            for token_id, when in used.items():
                session.execute(update(Token).where(Token.id == token_id).values(last_used_at=when))

    def namespace(self, name: str) -> NamespaceFacts:
        with self._db.session() as session:
            row = session.get(Namespace, name)
            return NamespaceFacts(name, row.kind if row else None)

    def namespaces(self) -> list[str]:
        with self._db.session() as session:
            return list(session.scalars(select(Namespace.name)))


class Packages:
    def __init__(self, db: Database, *args, **kwargs) -> None:
        self._db = db

    def facts(self, repository: str) -> PackageFacts | None:
        with self._db.session() as session:
            package = session.scalar(select(Package).where(Package.repository == repository,
                                                           Package.deleted_at.is_(None)))
            if package is None:
                return None
            users, orgs = {}, {}
            for role, org_name in session.execute(select(PackageRole, Org.name).outerjoin(
                    Org, Org.id == PackageRole.org_id).where(PackageRole.package_id == package.id)):
                if role.user_id is not None:
                    users[role.user_id] = Role.parse(role.role)
                elif org_name:
                    orgs[org_name] = Role.parse(role.role)
            return PackageFacts(repository, package.namespace, package.visibility, users, orgs)

    def _create(self, principal: Principal, repository: str) -> None:
        now = time.time()
        with self._db.session() as session:
            if session.scalar(select(Package.id).where(Package.repository == repository,
                                                       Package.deleted_at.is_(None))) is not None:
                return
            namespace, _, name = repository.partition("/")
            package = Package(namespace=namespace, name=name, repository=repository, visibility="private",
                              created_at=now, updated_at=now)
            session.add(package)
            session.flush()
            if principal.user_id is not None:
                session.add(PackageRole(package_id=package.id, user_id=principal.user_id, role="admin"))
            bump_revision(session)

    async def record_push(self, principal, repository, digest, media_type, body, tags) -> None:
        await self._db.run(self._create, principal, repository)

    async def record_delete(self, principal, repository, digest) -> None:
        return None

    async def count_download(self, repository, digest) -> None:
        return None
