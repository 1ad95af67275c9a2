"""Packages: one local repository each, with its versions (manifests), metadata, visibility and
download counts, as GitHub's Container registry keeps them.

Rules:
- the first push to a name no live package holds creates the package, private, with the pusher
  as admin; its namespace is the first path component, its name the rest;
- every manifest pushed into the repository is a version (an index's children too, as they are
  pushed by digest), with its platforms, its size (the manifest and every blob and child it names,
  each once) and its download count;
- metadata comes from the pushed image's config labels, or from an index's ``annotations``:
  ``org.opencontainers.image.source``, ``.description`` (at most 512 characters) and ``.licenses``
  (at most 256); a longer value is cut and the package says which were; a push that carries none
  of them keeps what the package had. The push never fails because of metadata;
- deleting a version stops serving it at once (untagged, unlinked from the repository) and keeps
  its tags; it stays restorable for ``access.retention_days``, and gc keeps its content alive
  that long (``held_digests``). Deleting a package deletes every version with it and unlinks
  their blobs from the repository; a push to the same name afterwards makes a new package, with
  none of the old one's content, and the old one can no longer be restored;
- a public version downloaded more than ``access.delete_download_limit`` times cannot be deleted
  (nor its package);
- every change that alters access (create, visibility, delete, restore) bumps the database
  revision and calls the invalidation hook, so remembered answers stop at once;
- roles (read < write < admin) are granted on a package to a user, or to an organisation's
  members as a group, by whoever may configure it (the admin role and ``write:packages``); a
  grant replaces the grantee's role, ``None`` removes it; each change is audited (``role``);
- reads of a package that the caller may not read are "not found", as on GitHub; anonymous
  callers see public packages only.
Every decision goes through ``proxy.registry.access``; this module only supplies the facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from proxy.config import AccessConfig
from proxy.errors import Denied, OCIError, Unauthorized
from proxy.oci.digest import Digest
from proxy.oci.media import parse_manifest
from proxy.registry.access import (READ_PACKAGES, VISIBILITIES, Action, NamespaceFacts, PackageFacts, Principal,
                                   Role, check, verdict)
from proxy.registry.invalidation import Invalidation
from proxy.storage.blobs import BlobStore
from proxy.storage.database import (Database, Namespace, Org, Package, PackageRole, User, Version,
                                    bump_revision)
from proxy.storage.meta import MetaStore, TagRecord

log = logging.getLogger("wharf.packages")

SOURCE = "org.opencontainers.image.source"
DESCRIPTION = "org.opencontainers.image.description"
LICENSES = "org.opencontainers.image.licenses"
# field -> (annotation key, longest value kept)
METADATA_LIMITS = {"source": (SOURCE, 2048), "description": (DESCRIPTION, 512), "licenses": (LICENSES, 256)}
FLUSH_SECONDS = 2.0          # download counts are written this often (and at close)
_CONFIG_READ_LIMIT = 4 * 1024 * 1024  # a bigger image config is not read for labels
_WALK_LIMIT = 2000           # manifests looked at when sizing an index (or relinking one)


# what callers get back ---------------------------------------------------------------------------
class PackageNotFound(Exception):
    """No package (or version) the caller may see answers to that address."""


class PackageConflict(Exception):
    """The request contradicts the package's state (e.g. its name was reused since it was deleted)."""


class PackageRefused(Exception):
    """The caller may act on the package, but this act is not allowed (e.g. a much-downloaded version)."""


class InvalidRequest(Exception):
    """A parameter has a value the API does not take."""


@dataclass(frozen=True, slots=True)
class PackageView:
    id: int
    namespace: str
    owner_type: str        # User | Organization
    name: str
    repository: str
    visibility: str
    version_count: int
    created_at: float
    updated_at: float
    deleted_at: float | None
    description: str | None
    licenses: str | None
    source: str | None
    truncated: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VersionView:
    id: int
    digest: str
    media_type: str
    tags: tuple[str, ...]
    platforms: tuple[str, ...]
    size: int
    created_at: float
    updated_at: float
    deleted_at: float | None
    download_count: int


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple
    total: int


@dataclass(frozen=True, slots=True)
class Found:
    """A page of search results, their total, and the owners of everything the caller may read."""

    items: tuple
    total: int
    owners: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VisibilityChange:
    package: PackageView
    notice: str | None  # said when the package stops being public: copies pulled meanwhile exist


ROLE_NAMES = ("read", "write", "admin")
GRANTEE_KINDS = ("user", "org")


@dataclass(frozen=True, slots=True)
class RoleGrant:
    """A role on a package, for one user (``kind`` user) or for the members of an organisation (org)."""

    kind: str
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class Described:
    """What a manifest says about itself for its version and package."""

    platforms: tuple[str, ...] = ()
    size: int = 0
    labels: dict | None = None  # None: the manifest carries no metadata


# the service ---------------------------------------------------------------------------------------
class Packages:
    def __init__(self, db: Database, meta: MetaStore, blobs: BlobStore, invalidation: Invalidation, audit,
                 config: AccessConfig, flush_seconds: float = FLUSH_SECONDS) -> None:
        self._db = db
        self._meta = meta
        self._blobs = blobs
        self._invalidation = invalidation
        self._audit = audit
        self._config = config
        self._flush_seconds = flush_seconds
        self._downloads: Counter[tuple[str, str]] = Counter()
        self._flusher: asyncio.Task | None = None

    # what the registry guard asks -----------------------------------------------------------------
    def facts(self, repository: str) -> PackageFacts | None:
        """The live package named ``repository`` as the access decision sees it (blocking)."""
        with self._db.session() as s:
            package = _live(s, repository)
            return None if package is None else _facts(s, package)

    def namespace_facts(self, namespace: str) -> NamespaceFacts:
        """Who owns the first path component ``namespace`` (blocking)."""
        with self._db.session() as s:
            return _namespace(s, namespace)

    async def record_push(self, principal: Principal, repository: str, digest: Digest | str, media_type: str,
                          body: bytes, tags: list[str]) -> None:
        """After a manifest PUT into a local repository: the package (created if need be), the version,
        the metadata. Never raises: a push does not fail because of its bookkeeping."""
        try:
            digest = str(digest)
            created = await self._db.run(self._record_push, principal, repository, digest, media_type, body,
                                         [str(t) for t in tags])
        except Exception:
            log.exception("could not record the push of %s@%s", repository, digest)
            return
        self._record("push", principal, repository=repository, digest=digest, tags=list(tags),
                     created=created)

    async def record_delete(self, principal: Principal, repository: str, digest: Digest | str) -> None:
        """After an OCI DELETE of a manifest by digest: its version is deleted (restorable)."""
        digest = str(digest)
        try:
            deleted = await self._db.run(self._record_delete, repository, digest)
        except Exception:
            log.exception("could not record the deletion of %s@%s", repository, digest)
            return
        if deleted:
            self._record("delete", principal, repository=repository, digest=digest)

    async def count_download(self, repository: str, digest: Digest | str) -> None:
        """One pull of a manifest; counted in memory and written every ``flush_seconds``."""
        self.note_download(repository, digest)

    def note_download(self, repository: str, digest: Digest | str) -> None:
        """``count_download`` for callers outside a coroutine (the replaying server), on the loop."""
        self._downloads[(repository, str(digest))] += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def flush_downloads(self) -> None:
        """Write the counted downloads (the counts of every worker add up in the database)."""
        pending, self._downloads = self._downloads, Counter()
        if not pending:
            return
        try:
            await self._db.run(self._write_downloads, pending)
        except Exception:
            log.exception("could not write download counts; kept for the next flush")
            self._downloads.update(pending)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush_downloads()

    def held_digests(self, now: float | None = None) -> set[str]:
        """Manifests of deleted versions still restorable (gc keeps them and what they reference)."""
        now = time.time() if now is None else now
        cutoff = now - self._retention_seconds
        with self._db.session() as s:
            rows = s.execute(select(Version.digest, Package.id, Package.repository, Package.deleted_at)
                             .join(Package, Package.id == Version.package_id)
                             .where(Version.deleted_at.is_not(None), Version.deleted_at > cutoff)).all()
            restorable = {}
            for _, package_id, repository, deleted_at in rows:
                if package_id not in restorable:
                    restorable[package_id] = deleted_at is None or _restorable_package(s, package_id, repository)
            return {digest for digest, package_id, _, _ in rows if restorable[package_id]}

    # what the API asks ----------------------------------------------------------------------------
    async def list_packages(self, principal: Principal, owner_kind: str | None, owner: str | None,
                            visibility: str | None = None, page: int = 1, per_page: int = 30) -> Page:
        """The live packages of ``owner`` that the caller may read (``owner`` None: the caller's own)."""
        if visibility is not None and visibility not in VISIBILITIES:
            raise InvalidRequest(f"visibility must be one of {', '.join(VISIBILITIES)}")
        return await self._db.run(self._list_packages, principal, owner_kind, owner, visibility, page, per_page)

    async def get_package(self, principal: Principal, owner_kind: str | None, owner: str | None,
                          name: str) -> PackageView:
        return await self._db.run(self._get_package, principal, owner_kind, owner, name)

    async def delete_package(self, principal: Principal, owner_kind: str | None, owner: str | None, name: str,
                             remote: str | None = None) -> None:
        repository, tags = await self._db.run(self._delete_package, principal, owner_kind, owner, name,
                                              self._pending_of)
        self._tags_changed(repository, tags)
        self._record("package.delete", principal, remote, repository=repository)

    async def restore_package(self, principal: Principal, owner_kind: str | None, owner: str | None, name: str,
                              remote: str | None = None) -> PackageView:
        view, tags = await self._db.run(self._restore_package, principal, owner_kind, owner, name)
        self._tags_changed(view.repository, tags)
        self._record("package.restore", principal, remote, repository=view.repository)
        return view

    async def list_versions(self, principal: Principal, owner_kind: str | None, owner: str | None, name: str,
                            state: str = "active", page: int = 1, per_page: int = 30) -> Page:
        if state not in ("active", "deleted"):
            raise InvalidRequest("state must be active or deleted")
        return await self._db.run(self._list_versions, principal, owner_kind, owner, name, state, page, per_page,
                                  dict(self._downloads))

    async def get_version(self, principal: Principal, owner_kind: str | None, owner: str | None, name: str,
                          version_id: int) -> VersionView:
        return await self._db.run(self._get_version, principal, owner_kind, owner, name, version_id,
                                  dict(self._downloads))

    async def delete_version(self, principal: Principal, owner_kind: str | None, owner: str | None, name: str,
                             version_id: int, remote: str | None = None) -> None:
        repository, digest, tags = await self._db.run(self._delete_version, principal, owner_kind, owner, name,
                                                      version_id, self._pending_of)
        self._tags_changed(repository, tags)
        self._record("delete", principal, remote, repository=repository, digest=digest, tags=tags)

    async def restore_version(self, principal: Principal, owner_kind: str | None, owner: str | None, name: str,
                              version_id: int, remote: str | None = None) -> VersionView:
        repository, view, tags = await self._db.run(self._restore_version, principal, owner_kind, owner, name,
                                                    version_id)
        self._tags_changed(repository, tags)
        self._record("restore", principal, remote, repository=repository, digest=view.digest, tags=list(tags))
        return view

    async def set_visibility(self, principal: Principal, owner_kind: str | None, owner: str | None, name: str,
                             visibility: Any, remote: str | None = None) -> VisibilityChange:
        if visibility not in VISIBILITIES:
            raise InvalidRequest(f"visibility must be one of {', '.join(VISIBILITIES)}")
        change, before = await self._db.run(self._set_visibility, principal, owner_kind, owner, name, visibility)
        if before != visibility:
            self._invalidation.names_changed()  # every answer remembered for its names
            self._record("visibility", principal, remote, repository=change.package.repository,
                         before=before, after=visibility)
        return change

    async def list_roles(self, principal: Principal, owner_kind: str | None, owner: str | None,
                         name: str) -> tuple[RoleGrant, ...]:
        """The roles granted on the package, users' then organisations', by name; for its admins only
        (who holds a role says who may read it)."""
        return await self._db.run(self._list_roles, principal, owner_kind, owner, name)

    async def set_role(self, principal: Principal, owner_kind: str | None, owner: str | None, name: str, *,
                       user: str | None = None, org: str | None = None, role: Any,
                       remote: str | None = None) -> RoleGrant | None:
        """Give ``user``, or the members of ``org`` (exactly one of them), ``role`` on the package,
        replacing the one they had; ``role`` None removes it. The caller needs to configure the
        package (admin role, ``write:packages``); the grantee must exist. Returns the grant (None
        once removed). A change bumps the revision (other processes follow it at their next poll)
        and drops this process's remembered answers; the caller then tells its ``Identity``."""
        if (user is None) == (org is None):
            raise InvalidRequest("a role is given to a user or to an organisation: name exactly one")
        if role is not None and (not isinstance(role, str) or role not in ROLE_NAMES):
            raise InvalidRequest(f"role must be one of {', '.join(ROLE_NAMES)}")
        kind, grantee = ("user", user) if user is not None else ("org", org)
        repository, before = await self._db.run(self._set_role, principal, owner_kind, owner, name, kind,
                                                 grantee, role)
        if before != role:
            self._invalidation.names_changed()  # answers remembered for the package's readers
            self._record("role", principal, remote, repository=repository, **{kind: grantee}, role=role,
                         previous_role=before)
        return None if role is None else RoleGrant(kind, grantee, role)

    async def list_all(self, principal: Principal, owner: str | None = None) -> list[PackageView]:
        """The live packages the caller may read, of ``owner`` or of every owner, by repository
        (for operators: unpaged)."""
        return await self._db.run(self._list_all, principal, owner)

    # what the pages ask ---------------------------------------------------------------------------
    async def search(self, principal: Principal, text: str | None = None, owner: str | None = None,
                     visibility: str | None = None, page: int = 1, per_page: int = 30) -> Found:
        """The live packages the caller may read (as ``list_packages`` decides) whose repository name
        or description holds ``text`` (any case), of ``owner`` and ``visibility`` when given, most
        recently updated first; with the owners of every package the caller may read."""
        if visibility is not None and visibility not in VISIBILITIES:
            raise InvalidRequest(f"visibility must be one of {', '.join(VISIBILITIES)}")
        return await self._db.run(self._search, principal, text, owner, visibility, page, per_page)

    async def acts(self, principal: Principal, owner_kind: str | None, owner: str | None,
                   name: str) -> frozenset[Action]:
        """What the caller may do to a package they may read (not found otherwise), as ``access``
        decides: the actions among pull, delete, restore and configure that would be allowed."""
        return await self._db.run(self._acts, principal, owner_kind, owner, name)

    async def referrers(self, principal: Principal, owner_kind: str | None, owner: str | None, name: str,
                        digests: Iterable[str]) -> dict[str, tuple[dict, ...]]:
        """The referrers (signatures, SBOMs: manifests whose ``subject`` is one of ``digests``) stored
        in the package, as the referrers API lists them, per subject; for callers who may read it."""
        return await self._db.run(self._referrers, principal, owner_kind, owner, name, tuple(digests))

    # blocking parts (database threads) ------------------------------------------------------------
    @property
    def _retention_seconds(self) -> float:
        return self._config.retention_days * 86400

    def _pending_of(self, repository: str, digest: str) -> int:
        return self._downloads.get((repository, digest), 0)

    def _record_push(self, principal: Principal, repository: str, digest: str, media_type: str, body: bytes,
                     tags: list[str]) -> bool:
        described = self._describe(body, media_type)
        for attempt in (1, 2):
            try:
                with self._db.session() as s:
                    return self._store_push(s, principal, repository, digest, media_type, described, tags)
            except IntegrityError:  # another worker created the package (or version) at the same time
                if attempt == 2:
                    raise
        return False

    def _store_push(self, s: Session, principal: Principal, repository: str, digest: str, media_type: str,
                    described: Described, tags: list[str]) -> bool:
        now = time.time()
        package = _live(s, repository)
        created = package is None
        if package is None:
            namespace, _, rest = repository.partition("/")
            package = Package(namespace=namespace, name=rest or repository, repository=repository,
                              visibility="private", created_at=now, updated_at=now, truncated="")
            s.add(package)
            s.flush()
            if principal.user_id is not None:
                s.add(PackageRole(package_id=package.id, user_id=principal.user_id, role="admin"))
            bump_revision(s)
        version = s.scalar(select(Version).where(Version.package_id == package.id, Version.digest == digest))
        if version is None:
            version = Version(package_id=package.id, digest=digest, media_type=media_type, created_at=now,
                              download_count=0, tags="[]")
            s.add(version)
        version.media_type = media_type
        version.size = described.size
        version.platforms = json.dumps(list(described.platforms))
        version.updated_at = now
        version.deleted_at = None
        if tags:  # a tag moves: the other versions no longer hold it
            for other in s.scalars(select(Version).where(Version.package_id == package.id,
                                                         Version.digest != digest, Version.deleted_at.is_(None))):
                held = json.loads(other.tags or "[]")
                kept = [t for t in held if t not in tags]
                if kept != held:
                    other.tags = json.dumps(kept)
            version.tags = json.dumps(list(dict.fromkeys([*json.loads(version.tags or "[]"), *tags])))
        if described.labels is not None:
            _apply_metadata(package, described.labels)
        package.updated_at = now
        return created

    def _describe(self, body: bytes, media_type: str) -> Described:
        """Platforms, size and labels of a manifest; whatever is unreadable is left out."""
        try:
            doc = json.loads(body)
            parsed = parse_manifest(body, media_type)
        except (ValueError, UnicodeDecodeError, RecursionError, OCIError):
            return Described(size=len(body))
        if not isinstance(doc, dict):
            return Described(size=len(body))
        size = len(body) + self._referenced_size(parsed)
        if parsed.manifests:
            platforms = [_platform(m.get("platform")) for m in doc.get("manifests") or [] if isinstance(m, dict)]
            labels = doc.get("annotations")
        else:
            config = self._config_of(doc)
            platforms = [_platform(config)] if config else []
            inner = config.get("config") if isinstance(config, dict) else None
            labels = inner.get("Labels") if isinstance(inner, dict) else None
        labels = labels if isinstance(labels, dict) and any(k in labels for k, _ in METADATA_LIMITS.values()) else None
        return Described(tuple(dict.fromkeys(p for p in platforms if p)), size, labels)

    def _referenced_size(self, parsed) -> int:
        """Every blob and child manifest named (through an index, recursively), each counted once."""
        seen: dict[str, int] = {}
        pending = [parsed]
        walked = 0
        while pending and walked < _WALK_LIMIT:
            current = pending.pop()
            walked += 1
            for descriptor in current.blobs:
                seen.setdefault(str(descriptor.digest), max(descriptor.size, 0))
            for descriptor in current.manifests:
                key = str(descriptor.digest)
                if key not in seen:
                    seen[key] = max(descriptor.size, 0)
                    child = self._parsed(descriptor.digest)
                    if child is not None:
                        pending.append(child)
        return sum(seen.values())

    def _parsed(self, digest: Digest):
        body = self._blobs.read_bytes(digest)
        if body is None:
            return None
        try:
            return parse_manifest(body, self._meta.manifest_type(str(digest)))
        except OCIError:
            return None

    def _config_of(self, doc: dict) -> dict | None:
        descriptor = doc.get("config")
        if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
            return None
        try:
            digest = Digest.parse(descriptor["digest"])
        except OCIError:
            return None
        size = self._blobs.size(digest)
        if size is None or size > _CONFIG_READ_LIMIT:
            return None
        try:
            config = json.loads(self._blobs.read_bytes(digest) or b"")
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        return config if isinstance(config, dict) else None

    def _record_delete(self, repository: str, digest: str) -> bool:
        with self._db.session() as s:
            package = _live(s, repository)
            if package is None:
                return False
            version = s.scalar(select(Version).where(Version.package_id == package.id, Version.digest == digest,
                                                     Version.deleted_at.is_(None)))
            if version is None:
                return False
            version.deleted_at = time.time()
            bump_revision(s)
            return True

    def _write_downloads(self, pending: Counter) -> None:
        with self._db.session() as s:
            for (repository, digest), count in pending.items():
                live = select(Package.id).where(Package.repository == repository, Package.deleted_at.is_(None))
                s.execute(update(Version).where(Version.package_id.in_(live.scalar_subquery()),
                                                Version.digest == digest)
                          .values(download_count=Version.download_count + count))

    # the API's reads and writes
    def _locate(self, s: Session, principal: Principal, owner_kind: str | None, owner: str | None, name: str,
                action: Action, deleted: bool = False) -> tuple[Package, NamespaceFacts]:
        """The package at that address, once the caller may ``action`` on it; a package the caller
        may not read is not found (as on GitHub), whatever it is."""
        owner = self._owner(principal, owner)
        namespace = _namespace(s, owner)
        if not _owner_matches(namespace, owner_kind):
            raise PackageNotFound(f"no such {'organization' if owner_kind == 'orgs' else 'user'}: {owner}")
        repository = f"{owner}/{name}"
        package = _deleted(s, repository, self._retention_seconds) if deleted else _live(s, repository)
        if action is not Action.LIST and not principal.signed_in:
            raise Unauthorized("requires authentication")
        facts = None if package is None else _facts(s, package)
        if facts is None or facts.visibility != "public":
            _require_read_scope(principal)
        if facts is None or verdict(principal, Action.LIST, repository, namespace, facts) is not None:
            raise PackageNotFound(f"package {name} not found")
        check(principal, action, repository, namespace, facts)
        return package, namespace

    def _owner(self, principal: Principal, owner: str | None) -> str:
        if owner is not None:
            return owner
        if not principal.signed_in:
            raise Unauthorized("requires authentication")
        return principal.user

    def _list_packages(self, principal: Principal, owner_kind: str | None, owner: str | None,
                       visibility: str | None, page: int, per_page: int) -> Page:
        owner = self._owner(principal, owner)
        with self._db.session() as s:
            namespace = _namespace(s, owner)
            query = select(Package).where(Package.namespace == owner, Package.deleted_at.is_(None))
            if visibility is not None:
                query = query.where(Package.visibility == visibility)
            packages = list(s.scalars(query.order_by(Package.name, Package.id)))
            readable = [p for p in packages
                        if verdict(principal, Action.LIST, p.repository, namespace, _facts(s, p)) is None]
            # a namespace nobody owns exists, for this caller, only through what they may read in it
            if not _owner_matches(namespace, owner_kind) or (namespace.kind is None and not readable):
                raise PackageNotFound(f"no such {'organization' if owner_kind == 'orgs' else 'user'}: {owner}")
            start = (page - 1) * per_page
            return Page(tuple(_package_view(s, p, namespace) for p in readable[start:start + per_page]),
                        len(readable))

    def _get_package(self, principal, owner_kind, owner, name) -> PackageView:
        with self._db.session() as s:
            package, namespace = self._locate(s, principal, owner_kind, owner, name, Action.LIST)
            return _package_view(s, package, namespace)

    def _delete_package(self, principal, owner_kind, owner, name, pending) -> tuple[str, list[str]]:
        with self._db.session() as s:
            package, _ = self._locate(s, principal, owner_kind, owner, name, Action.DELETE)
            versions = list(s.scalars(select(Version).where(Version.package_id == package.id,
                                                            Version.deleted_at.is_(None))))
            for version in versions:
                self._refuse_much_downloaded(package, version, pending)
            now = time.time()
            changed: list[str] = []
            for version in versions:
                tags = self._unlink(package.repository, version)
                self._unlink_blobs(package.repository, version)
                version.tags = json.dumps(tags)
                version.deleted_at = now
                changed.extend([*tags, version.digest])
            package.deleted_at = now
            bump_revision(s)
            return package.repository, changed

    def _restore_package(self, principal, owner_kind, owner, name) -> tuple[PackageView, list[str]]:
        with self._db.session() as s:
            repository = f"{self._owner(principal, owner)}/{name}"
            if _live(s, repository) is not None and _deleted(s, repository, self._retention_seconds) is not None:
                # only a caller who may see the old package learns that it exists
                package, _ = self._locate(s, principal, owner_kind, owner, name, Action.RESTORE, deleted=True)
                raise PackageConflict(f"the name {name} is used by a new package; the deleted one cannot be restored")
            package, namespace = self._locate(s, principal, owner_kind, owner, name, Action.RESTORE, deleted=True)
            changed: list[str] = []
            for version in s.scalars(select(Version).where(Version.package_id == package.id,
                                                           Version.deleted_at == package.deleted_at)):
                changed.extend(self._relink_version(s, package, version))
            package.deleted_at = None
            package.updated_at = time.time()
            bump_revision(s)
            s.flush()
            return _package_view(s, package, namespace), changed

    def _list_versions(self, principal, owner_kind, owner, name, state, page, per_page, pending) -> Page:
        with self._db.session() as s:
            package, _ = self._locate(s, principal, owner_kind, owner, name, Action.LIST)
            query = select(Version).where(Version.package_id == package.id)
            query = query.where(Version.deleted_at.is_(None) if state == "active" else Version.deleted_at.is_not(None))
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(query.order_by(Version.created_at.desc(), Version.id.desc())
                             .offset((page - 1) * per_page).limit(per_page))
            return Page(tuple(self._version_view(package, v, pending) for v in rows), total)

    def _get_version(self, principal, owner_kind, owner, name, version_id, pending) -> VersionView:
        with self._db.session() as s:
            package, _ = self._locate(s, principal, owner_kind, owner, name, Action.LIST)
            return self._version_view(package, _version(s, package, version_id), pending)

    def _delete_version(self, principal, owner_kind, owner, name, version_id, pending) -> tuple[str, str, list[str]]:
        with self._db.session() as s:
            package, _ = self._locate(s, principal, owner_kind, owner, name, Action.DELETE)
            version = _version(s, package, version_id, deleted=False)
            self._refuse_much_downloaded(package, version, pending)
            tags = self._unlink(package.repository, version)
            version.tags = json.dumps(tags)
            version.deleted_at = time.time()
            bump_revision(s)
            return package.repository, version.digest, [*tags, version.digest]

    def _restore_version(self, principal, owner_kind, owner, name, version_id) -> tuple[str, VersionView, list[str]]:
        with self._db.session() as s:
            package, _ = self._locate(s, principal, owner_kind, owner, name, Action.RESTORE)
            version = _version(s, package, version_id, deleted=True)
            if version.deleted_at <= time.time() - self._retention_seconds:
                raise PackageNotFound(f"version {version_id} was deleted more than "
                                      f"{self._config.retention_days:g} days ago")
            changed = self._relink_version(s, package, version)
            bump_revision(s)
            s.flush()
            return package.repository, self._version_view(package, version, {}), changed

    def _set_visibility(self, principal, owner_kind, owner, name, visibility) -> tuple[VisibilityChange, str]:
        with self._db.session() as s:
            package, namespace = self._locate(s, principal, owner_kind, owner, name, Action.CONFIGURE)
            before = package.visibility
            notice = None
            if before != visibility:
                package.visibility = visibility
                package.updated_at = time.time()
                bump_revision(s)
                if before == "public":
                    notice = (f"{package.repository} was public: copies pulled while it was public may exist "
                              f"outside Wharf, and this change does not reach them")
            s.flush()
            return VisibilityChange(_package_view(s, package, namespace), notice), before

    def _list_roles(self, principal, owner_kind, owner, name) -> tuple[RoleGrant, ...]:
        with self._db.session() as s:
            package, _ = self._locate(s, principal, owner_kind, owner, name, Action.CONFIGURE)
            held: dict[tuple[str, str], Role] = {}
            rows = s.execute(select(User.name, Org.name, PackageRole.role).select_from(PackageRole)
                             .outerjoin(User, User.id == PackageRole.user_id)
                             .outerjoin(Org, Org.id == PackageRole.org_id)
                             .where(PackageRole.package_id == package.id))
            for user, org, role in rows:
                key = ("user", user) if user is not None else ("org", org)
                parsed = _parse_role(role)
                if key[1] is not None and parsed is not None:
                    held[key] = max(parsed, held.get(key, Role.NONE))
            order = sorted(held, key=lambda key: (GRANTEE_KINDS.index(key[0]), key[1]))
            return tuple(RoleGrant(kind, grantee, held[(kind, grantee)].name.lower()) for kind, grantee in order)

    def _set_role(self, principal, owner_kind, owner, name, kind, grantee, role) -> tuple[str, str | None]:
        """The change in one transaction; returns the repository and the role the grantee had."""
        with self._db.session() as s:
            package, _ = self._locate(s, principal, owner_kind, owner, name, Action.CONFIGURE)
            model, column = (User, PackageRole.user_id) if kind == "user" else (Org, PackageRole.org_id)
            grantee_id = s.scalar(select(model.id).where(model.name == grantee))
            if grantee_id is None:
                raise PackageNotFound(f"no such {'user' if kind == 'user' else 'organization'}: {grantee}")
            rows = list(s.scalars(select(PackageRole).where(PackageRole.package_id == package.id,
                                                            column == grantee_id)))
            roles = [r for r in (_parse_role(row.role) for row in rows) if r is not None]
            before = max(roles).name.lower() if roles else None
            if before == role and len(rows) == (role is not None):
                return package.repository, before
            for row in rows:  # one row per grantee (NULLs keep the unique constraint from saying so)
                s.delete(row)
            if role is not None:
                s.add(PackageRole(package_id=package.id, role=role,
                                  **({"user_id": grantee_id} if kind == "user" else {"org_id": grantee_id})))
            bump_revision(s)
            return package.repository, before

    def _list_all(self, principal: Principal, owner: str | None) -> list[PackageView]:
        with self._db.session() as s:
            query = select(Package).where(Package.deleted_at.is_(None))
            if owner is not None:
                query = query.where(Package.namespace == owner)
            packages = list(s.scalars(query.order_by(Package.repository, Package.id)))
            if owner is not None and not packages and _namespace(s, owner).kind is None:
                raise PackageNotFound(f"no such user or organization: {owner}")
            namespaces: dict[str, NamespaceFacts] = {}
            views = []
            for package in packages:
                namespace = namespaces.get(package.namespace) or namespaces.setdefault(
                    package.namespace, _namespace(s, package.namespace))
                if verdict(principal, Action.LIST, package.repository, namespace, _facts(s, package)) is None:
                    views.append(_package_view(s, package, namespace))
            return views

    def _search(self, principal: Principal, text: str | None, owner: str | None, visibility: str | None,
                page: int, per_page: int) -> Found:
        needle = (text or "").strip().lower()
        with self._db.session() as s:
            packages = list(s.scalars(select(Package).where(Package.deleted_at.is_(None))
                                      .order_by(Package.updated_at.desc(), Package.id.desc())))
            namespaces: dict[str, NamespaceFacts] = {}
            readable = []
            for package in packages:
                namespace = namespaces.get(package.namespace) or namespaces.setdefault(
                    package.namespace, _namespace(s, package.namespace))
                if verdict(principal, Action.LIST, package.repository, namespace, _facts(s, package)) is None:
                    readable.append((package, namespace))
            owners = tuple(sorted({package.namespace for package, _ in readable}))
            found = [(p, n) for p, n in readable
                     if (owner is None or p.namespace == owner) and (visibility is None or p.visibility == visibility)
                     and (not needle or needle in p.repository.lower() or needle in (p.description or "").lower())]
            start = (page - 1) * per_page
            return Found(tuple(_package_view(s, p, n) for p, n in found[start:start + per_page]), len(found), owners)

    def _acts(self, principal, owner_kind, owner, name) -> frozenset[Action]:
        with self._db.session() as s:
            package, namespace = self._locate(s, principal, owner_kind, owner, name, Action.LIST)
            facts = _facts(s, package)
            return frozenset(action for action in (Action.PULL, Action.DELETE, Action.RESTORE, Action.CONFIGURE)
                             if verdict(principal, action, package.repository, namespace, facts) is None)

    def _referrers(self, principal, owner_kind, owner, name, digests) -> dict[str, tuple[dict, ...]]:
        with self._db.session() as s:
            package, _ = self._locate(s, principal, owner_kind, owner, name, Action.LIST)
            scope = f"/{package.repository}"
            found = {}
            for digest in digests:
                stored = self._meta.document(f"referrers:{scope}:{digest}") or []
                found[digest] = tuple(d for d in stored if isinstance(d, dict) and isinstance(d.get("digest"), str))
            return found

    def _refuse_much_downloaded(self, package: Package, version: Version, pending) -> None:
        limit = self._config.delete_download_limit
        downloads = version.download_count + pending(package.repository, version.digest)
        if package.visibility == "public" and downloads > limit:
            raise PackageRefused(f"Publicly visible package versions with more than {limit} downloads cannot be "
                                 f"deleted ({version.digest} has {downloads})")

    def _version_view(self, package: Package, version: Version, pending: dict) -> VersionView:
        saved = tuple(json.loads(version.tags or "[]"))
        if version.deleted_at is None:  # the tags that still name it
            scope = f"/{package.repository}"
            saved = tuple(t for t in saved if (r := self._meta.tag(scope, t)) is not None and r.digest == version.digest)
        return VersionView(version.id, version.digest, version.media_type, saved,
                           tuple(json.loads(version.platforms or "[]")), version.size, version.created_at,
                           version.updated_at, version.deleted_at,
                           version.download_count + pending.get((package.repository, version.digest), 0))

    # the store: what serves a version -------------------------------------------------------------
    def _unlink(self, repository: str, version: Version) -> list[str]:
        """Stop serving the version: its tags removed, its manifest unlinked from the repository
        (as an OCI DELETE by digest does). Returns the tags it held."""
        scope = f"/{repository}"
        digest = version.digest
        record = self._meta.repo(repository) or {}
        tags = [t for t in record.get("tags", []) if (r := self._meta.tag(scope, t)) is not None and r.digest == digest]
        for tag in tags:
            self._meta.delete_tag(scope, tag)
            self._meta.remove_repo_tag(repository, tag)
        self._meta.revoke(digest, scope)
        self._meta.remove_repo_manifest(repository, digest)
        parsed = self._parsed_key(digest)
        if parsed is not None and parsed.subject is not None:
            self._meta.remove_referrer(scope, str(parsed.subject.digest), digest)
        return tags

    def _unlink_blobs(self, repository: str, version: Version) -> None:
        """With its package gone, the blobs a version names leave the repository too: a new package
        of that name (maybe another user's) starts with none of the old one's content. A restore
        links them again (``_link_tree``); gc keeps them meanwhile (``held_digests``)."""
        parsed = self._parsed_key(version.digest)
        if parsed is not None:
            for blob in parsed.blobs:
                self._meta.revoke(str(blob.digest), f"/{repository}")

    def _relink_version(self, s: Session, package: Package, version: Version) -> list[str]:
        """Serve the version again: its manifest and everything it references linked into the
        repository, each saved tag set again unless another manifest took it meanwhile. The
        children of an index are restored with it. Returns the tags (and digests) that changed."""
        repository, scope = package.repository, f"/{package.repository}"
        digest = Digest.parse(version.digest)
        body = self._blobs.read_bytes(digest)
        if body is None:
            raise PackageConflict(f"the content of {version.digest} is gone; it cannot be restored")
        children = self._link_tree(scope, digest)
        self._meta.set_manifest_type(version.digest, version.media_type)
        self._meta.add_repo_manifest(repository, version.digest)
        parsed = self._parsed_key(version.digest)
        if parsed is not None and parsed.subject is not None:
            descriptor = {"mediaType": version.media_type, "digest": version.digest, "size": len(body)}
            if parsed.artifact_type:
                descriptor["artifactType"] = parsed.artifact_type
            if parsed.annotations:
                descriptor["annotations"] = parsed.annotations
            self._meta.add_referrer(scope, str(parsed.subject.digest), descriptor)
        now = time.time()
        retagged = []
        for tag in json.loads(version.tags or "[]"):
            if self._meta.tag(scope, tag) is None:
                self._meta.set_tag(scope, tag, TagRecord(version.digest, version.media_type, len(body), now))
                self._meta.add_repo_tag(repository, tag)
                retagged.append(tag)
        version.tags = json.dumps(retagged)
        version.deleted_at = None
        version.updated_at = now
        if children:
            for child in s.scalars(select(Version).where(Version.package_id == package.id,
                                                         Version.digest.in_(children),
                                                         Version.deleted_at.is_not(None))):
                self._meta.add_repo_manifest(repository, child.digest)
                child.deleted_at = None
                child.updated_at = now
        return [*retagged, version.digest]

    def _link_tree(self, scope: str, top: Digest) -> list[str]:
        """Link ``top`` and, recursively, every blob and child manifest it names into ``scope``
        (renewing gc's grace); returns the child manifests."""
        children: list[str] = []
        seen: set[str] = set()
        pending = [top]
        while pending and len(seen) < _WALK_LIMIT:
            digest = pending.pop()
            key = str(digest)
            if key in seen:
                continue
            seen.add(key)
            self._meta.mark_pushed(key)
            self._meta.grant(key, scope, False)
            parsed = self._parsed(digest)
            if parsed is None:
                continue
            for blob in parsed.blobs:
                if self._blobs.size(blob.digest) is not None:
                    self._meta.mark_pushed(str(blob.digest))
                    self._meta.grant(str(blob.digest), scope, False)
            for child in parsed.manifests:
                children.append(str(child.digest))
                pending.append(child.digest)
        return children

    def _parsed_key(self, digest: str):
        try:
            return self._parsed(Digest.parse(digest))
        except OCIError:
            return None

    # on the loop ----------------------------------------------------------------------------------
    def _tags_changed(self, repository: str, references: Iterable[str]) -> None:
        """Remembered answers by these tags (and digests) of the repository are dropped."""
        scope = f"/{repository}"
        for reference in dict.fromkeys(references):
            self._invalidation.tag_changed(scope, reference)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_seconds)
        await self.flush_downloads()

    def _record(self, event: str, principal: Principal, remote: str | None = None, **details) -> None:
        """One audit line; a failing audit log never fails the act it records."""
        if self._audit is None:
            return
        try:
            self._audit.record(event, actor=principal.user, remote=remote, **details)
        except Exception:
            log.exception("could not write the audit record for %s", event)


# queries -------------------------------------------------------------------------------------------
def _live(s: Session, repository: str) -> Package | None:
    return s.scalar(select(Package).where(Package.repository == repository, Package.deleted_at.is_(None)))


def _deleted(s: Session, repository: str, retention: float) -> Package | None:
    """The most recently deleted package of that name, while it may be restored."""
    return s.scalar(select(Package).where(Package.repository == repository, Package.deleted_at.is_not(None),
                                          Package.deleted_at > time.time() - retention)
                    .order_by(Package.deleted_at.desc()).limit(1))


def _restorable_package(s: Session, package_id: int, repository: str) -> bool:
    """A deleted package may be restored while no new package took its name and no later one was deleted."""
    if _live(s, repository) is not None:
        return False
    latest = s.scalar(select(Package.id).where(Package.repository == repository, Package.deleted_at.is_not(None))
                      .order_by(Package.deleted_at.desc()).limit(1))
    return latest == package_id


def _version(s: Session, package: Package, version_id: int, deleted: bool | None = None) -> Version:
    version = s.get(Version, version_id)
    if version is None or version.package_id != package.id or (
            deleted is not None and (version.deleted_at is not None) != deleted):
        state = {None: "", True: "deleted ", False: "active "}[deleted]
        raise PackageNotFound(f"no {state}version {version_id} in package {package.name}")
    return version


def _namespace(s: Session, name: str) -> NamespaceFacts:
    return NamespaceFacts(name, s.scalar(select(Namespace.kind).where(Namespace.name == name)))


def _owner_matches(namespace: NamespaceFacts, owner_kind: str | None) -> bool:
    """``users/`` addresses users (and namespaces nobody owns), ``orgs/`` organisations."""
    if owner_kind == "orgs":
        return namespace.kind == "org"
    return namespace.kind != "org"


def _facts(s: Session, package: Package) -> PackageFacts:
    user_roles: dict[int, Role] = {}
    org_roles: dict[str, Role] = {}
    rows = s.execute(select(PackageRole.user_id, Org.name, PackageRole.role)
                     .outerjoin(Org, Org.id == PackageRole.org_id)
                     .where(PackageRole.package_id == package.id))
    for user_id, org, role in rows:
        try:
            parsed = Role.parse(role)
        except KeyError:
            continue
        if user_id is not None:
            user_roles[user_id] = max(parsed, user_roles.get(user_id, Role.NONE))
        elif org is not None:
            org_roles[org] = max(parsed, org_roles.get(org, Role.NONE))
    return PackageFacts(package.repository, package.namespace, package.visibility, user_roles, org_roles)


def _parse_role(value: str) -> Role | None:
    try:
        return Role.parse(value)
    except KeyError:
        return None


def _require_read_scope(principal: Principal) -> None:
    """A signed-in caller whose token may not read learns so, whether or not the package exists."""
    if principal.signed_in and not principal.may(READ_PACKAGES):
        raise Denied(f"the token lacks the {READ_PACKAGES} scope")


def _package_view(s: Session, package: Package, namespace: NamespaceFacts) -> PackageView:
    versions = select(func.count()).where(Version.package_id == package.id)
    if package.deleted_at is None:
        versions = versions.where(Version.deleted_at.is_(None))
    else:
        versions = versions.where(Version.deleted_at == package.deleted_at)
    return PackageView(package.id, package.namespace, "Organization" if namespace.kind == "org" else "User",
                       package.name, package.repository, package.visibility, s.scalar(versions) or 0,
                       package.created_at, package.updated_at, package.deleted_at, package.description,
                       package.licenses, package.source,
                       tuple(t for t in (package.truncated or "").split(",") if t))


def _platform(value: Any) -> str | None:
    """``os/architecture[/variant]`` of an index entry's platform or an image config."""
    if not isinstance(value, dict):
        return None
    parts = [value.get("os"), value.get("architecture")]
    if not all(isinstance(p, str) and p for p in parts):
        return None
    if isinstance(value.get("variant"), str) and value["variant"]:
        parts.append(value["variant"])
    return "/".join(parts)


def _apply_metadata(package: Package, labels: dict) -> None:
    """The package's source, description and licenses from the labels (or annotations), cut to length."""
    truncated = []
    for field_name, (key, limit) in METADATA_LIMITS.items():
        value = labels.get(key)
        if not isinstance(value, str):
            value = None
        elif len(value) > limit:
            value = value[:limit]
            truncated.append(field_name)
        setattr(package, field_name, value)
    package.truncated = ",".join(truncated)
