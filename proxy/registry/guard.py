"""The access check in front of the registry: every /v2/ route asks it before any content moves.

It decorates the pull-through registry (which decorates the local one), so handlers keep not
knowing what they talk to. Rules:
- local repositories: ``proxy.registry.access`` decides, from the caller's principal, the
  repository's namespace and its package (remembered per database revision by ``Identity``);
- upstream repositories: anonymous callers pull as before unless ``access.pull_through`` is
  ``authenticated``, then only signed-in accounts whose token may read packages; upstream
  content's own visibility is the pull-through registry's business, as before;
- ``_catalog`` and tag lists show only repositories the caller may read;
- a mount links a blob only from a repository the caller may read (without ``from``: from one of
  the local repositories that link it, if the caller may read one);
- answers for public packages are marked shared (the replaying server may answer them for every
  client, until a tag moves or the access facts change: both drop remembered answers); answers
  of other packages are marked for their reader only (replayed to the same Authorization header
  while its credential stands: a revoked token or a changed role changes the access facts);
- a manifest push creates the package (private, the pusher its admin) and records the version;
  a delete by digest marks the version deleted (restorable).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from proxy.config import AccessConfig
from proxy.errors import Unauthorized
from proxy.oci.digest import Digest, is_digest
from proxy.registry.access import (READ_PACKAGES, Action, NamespaceFacts, PackageFacts, Principal, check,
                                   verdict)
from proxy.registry.base import (BlobResult, CatalogPage, Chunk, Client, ManifestResult, PushedManifest,
                                 ReferrersResult, Registry, TagsPage, Target, UploadState)
from proxy.registry.identity import Identity
from proxy.storage.meta import MetaStore

SHARED_SECONDS = 60.0  # a public package's answer may be replayed this long (dropped earlier on change)


class AccessGuard:
    """Registry that checks access, then delegates to ``inner``."""

    def __init__(self, inner: Registry, identity: Identity, packages: Any, meta: MetaStore,
                 config: AccessConfig) -> None:
        self._inner = inner
        self._identity = identity
        self._packages = packages
        self._meta = meta
        self._config = config

    @property
    def fills(self):
        """The fills in flight (for tests and the operator's pages); nothing else passes unchecked."""
        return self._inner.fills

    # the decision ------------------------------------------------------------------------------
    async def _facts(self, repo: str, action: Action) -> tuple[NamespaceFacts, PackageFacts | None]:
        """The repository's namespace and package. For anything but a push, a repository with
        content but no package yet (blobs uploaded before the first manifest, or pushed before
        accounts existed) counts as a private package nobody holds a role on."""
        namespace = await self._identity.namespace(repo.partition("/")[0])
        package = await self._identity.package(repo, self._packages)
        if package is None and action is not Action.PUSH and self._meta.repo(repo) is not None:
            package = PackageFacts(repo, namespace.name)
        return namespace, package

    async def _check_local(self, principal: Principal, action: Action, repo: str) -> PackageFacts | None:
        namespace, package = await self._facts(repo, action)
        check(principal, action, repo, namespace, package)
        return package

    async def _may_local(self, principal: Principal, action: Action, repo: str) -> bool:
        namespace, package = await self._facts(repo, action)
        return verdict(principal, action, repo, namespace, package) is None

    def _check_upstream(self, client: Client) -> None:
        if self._config.pull_through == "authenticated" and not (
                client.principal.signed_in and client.principal.may(READ_PACKAGES)):
            raise Unauthorized("this Wharf serves upstream content to signed-in users only")

    async def _check(self, target: Target, client: Client, action: Action):
        if target.upstream is not None:
            if action in (Action.PULL, Action.LIST):
                self._check_upstream(client)
            return None  # pushes and deletes there: the registry refuses them (Denied)
        return await self._check_local(client.principal, action, target.repo)

    async def allowed(self, principal: Principal, action: Action, target: Target) -> bool:
        """Whether ``principal`` may do ``action`` on ``target`` (what ``/token`` grants, the pages show)."""
        if target.upstream is not None:
            if action not in (Action.PULL, Action.LIST):
                return False
            return self._config.pull_through == "anonymous" or (principal.signed_in
                                                                 and principal.may(READ_PACKAGES))
        return await self._may_local(principal, action, target.repo)

    # pull --------------------------------------------------------------------------------------
    async def manifest(self, target: Target, reference: str, accept: list[str], client: Client,
                       head: bool) -> ManifestResult:
        package = await self._check(target, client, Action.PULL)
        result = await self._inner.manifest(target, reference, accept, client, head)
        if target.upstream is None:
            if package is not None and package.visibility == "public":
                result.shared_until = time.time() + SHARED_SECONDS
            elif client.principal.signed_in:
                result.readers_until = time.time() + SHARED_SECONDS
            if not head:
                await self._packages.count_download(target.repo, result.digest)
        elif self._config.pull_through == "authenticated":
            result.shared_until = 0.0  # replayed answers skip the check: not for upstream content now
        return result

    async def blob(self, target: Target, digest: Digest, client: Client, head: bool) -> BlobResult:
        await self._check(target, client, Action.PULL)
        return await self._inner.blob(target, digest, client, head)

    async def tags(self, target: Target, n: int | None, last: str | None, client: Client) -> TagsPage:
        await self._check(target, client, Action.LIST)
        return await self._inner.tags(target, n, last, client)

    async def referrers(self, target: Target, digest: Digest, artifact_type: str | None,
                        client: Client) -> ReferrersResult:
        await self._check(target, client, Action.PULL)
        return await self._inner.referrers(target, digest, artifact_type, client)

    async def catalog(self, n: int | None, last: str | None, client: Client) -> CatalogPage:
        """The local repositories the caller may read, paged after filtering."""
        everything = await self._inner.catalog(None, None, client)
        readable = []
        for name in everything.repositories:
            if last is not None and name <= last:
                continue
            if await self._may_local(client.principal, Action.LIST, name):
                readable.append(name)
                if n is not None and len(readable) > n:
                    break
        if n is not None and len(readable) > n:
            page = readable[:n]
            return CatalogPage(page, urlencode({"n": n, "last": page[-1]}) if page else None)
        return CatalogPage(readable)

    # push --------------------------------------------------------------------------------------
    async def start_upload(self, target: Target, algorithm: str, client: Client) -> UploadState:
        await self._check(target, client, Action.PUSH)
        return await self._inner.start_upload(target, algorithm, client)

    async def mount_blob(self, target: Target, digest: Digest, source: Target | None, client: Client) -> bool:
        """Mount only what the caller may read in the source; otherwise the client uploads."""
        await self._check(target, client, Action.PUSH)
        if target.upstream is not None:
            return await self._inner.mount_blob(target, digest, source, client)
        if source is None:
            source = await self._readable_source(client.principal, digest)
            if source is None:
                return False
        elif source.upstream is None:
            if not await self._may_local(client.principal, Action.PULL, source.repo):
                return False
        elif self._config.pull_through == "authenticated" and not client.principal.signed_in:
            return False
        return await self._inner.mount_blob(target, digest, source, client)

    async def _readable_source(self, principal: Principal, digest: Digest) -> Target | None:
        """A local repository linking ``digest`` that the caller may read, if there is one."""
        for scope in sorted(self._meta.visibility(str(digest), fresh=True).repos):
            if scope.startswith("/") and await self._may_local(principal, Action.PULL, scope[1:]):
                return Target(None, scope[1:])
        return None

    async def upload_chunk(self, target: Target, upload_id: str, chunk: Chunk, client: Client) -> UploadState:
        await self._check(target, client, Action.PUSH)
        return await self._inner.upload_chunk(target, upload_id, chunk, client)

    async def upload_status(self, target: Target, upload_id: str, client: Client) -> UploadState:
        await self._check(target, client, Action.PUSH)
        return await self._inner.upload_status(target, upload_id, client)

    async def finish_upload(self, target: Target, upload_id: str, digest: Digest, chunk: Chunk | None,
                            client: Client) -> Digest:
        await self._check(target, client, Action.PUSH)
        return await self._inner.finish_upload(target, upload_id, digest, chunk, client)

    async def cancel_upload(self, target: Target, upload_id: str, client: Client) -> None:
        await self._check(target, client, Action.PUSH)
        await self._inner.cancel_upload(target, upload_id, client)

    async def put_manifest(self, target: Target, reference: str, body: bytes, content_type: str | None,
                           tags: list[str], client: Client) -> PushedManifest:
        await self._check(target, client, Action.PUSH)
        pushed = await self._inner.put_manifest(target, reference, body, content_type, tags, client)
        if target.upstream is None:
            media_type = self._meta.manifest_type(str(pushed.digest)) or (content_type or "")
            await self._packages.record_push(client.principal, target.repo, pushed.digest, media_type, body,
                                             pushed.tags)
            await self._identity.changed()  # a package created now is no longer "unknown" here
        return pushed

    async def delete_manifest(self, target: Target, reference: str, client: Client) -> None:
        await self._check(target, client, Action.DELETE)
        await self._inner.delete_manifest(target, reference, client)
        if target.upstream is None and is_digest(reference):
            await self._packages.record_delete(client.principal, target.repo, Digest.parse(reference))

    async def delete_blob(self, target: Target, digest: Digest, client: Client) -> None:
        await self._check(target, client, Action.DELETE)
        await self._inner.delete_blob(target, digest, client)
