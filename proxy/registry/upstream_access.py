"""Who may see upstream content stored in the cache, and what upstream told each credential.

Authorization is never widened by the cache: content fetched without client credentials is
public; content fetched with them is served to another client only after upstream confirms,
with a HEAD carrying that client's credentials, that it may read the repository (remembered for
``cache.authz_ttl`` per credential and repository). A tag is judged by how its resolution was
learned, not by its digest: a tag learned with a client's credential is private even when the
digest it names is also public content. A stale tag goes only to clients who could see it
without asking upstream.

A 404 from upstream is remembered for ``cache.negative_ttl`` per credential, repository and
reference: what one credential may not see says nothing to another.
"""

from __future__ import annotations

from proxy.config import CacheConfig
from proxy.oci.digest import Digest
from proxy.registry.base import Client, Target
from proxy.storage.meta import MetaStore, TagRecord
from proxy.storage.shared import SharedCache
from proxy.upstream.auth import Credential
from proxy.upstream.client import Upstream


class UpstreamAccess:
    """The one place that decides whether a client may see a stored upstream object or tag."""

    def __init__(self, meta: MetaStore, shared: SharedCache, cache: CacheConfig) -> None:
        self._meta = meta
        self._shared = shared
        self._cache = cache

    @staticmethod
    def effective(upstream: Upstream, client: Client) -> tuple[Credential | None, bool]:
        """The credential to use upstream, and whether what it fetches is public.

        A client's own credential wins and makes the result private to clients upstream
        confirms; without one, the configured upstream credential (or none) is used and the
        result is public to everyone who can reach Wharf.
        """
        if client.credential is not None:
            return client.credential, False
        return upstream.configured_credential, True

    @staticmethod
    def cred_id(upstream: Upstream, client: Client) -> str:
        """What keys per-credential facts: a client's keyed id; the configured credential, the same
        for every client, by a name, so that no hash of the operator's secret is ever stored."""
        if client.credential is not None:
            return client.credential.id
        return "configured" if upstream.configured_credential is not None else "anon"

    # objects and tags ------------------------------------------------------------------------
    async def authorize(self, upstream: Upstream, target: Target, digest: Digest, client: Client,
                        blob: bool = False) -> None:
        """Let the client see a stored object only if it is public or upstream confirms access
        (a HEAD of the manifest or blob with its credential; 404 is ManifestUnknown/BlobUnknown)."""
        visibility = self._meta.visibility(str(digest))
        if not visibility.public:  # another worker may have learned more since this one looked
            visibility = self._meta.visibility(str(digest), fresh=True)
        if visibility.public:
            return
        if target.scope in visibility.repos and await self._shared.get(self._authz_key(upstream, target, client)):
            return
        credential, public = self.effective(upstream, client)
        if blob:
            await upstream.head_blob(target.repo, digest, credential)
        else:
            await upstream.head_manifest(target.repo, str(digest), credential)
        self._meta.grant(str(digest), target.scope, public)
        await self.remember_authorized(upstream, target, client)

    async def authorize_tag(self, upstream: Upstream, target: Target, tag: str, record: TagRecord,
                            client: Client) -> None:
        """Let the client see a stored tag only if it was learned publicly or upstream confirms access.

        A public answer from upstream (the client has no credential of its own) makes the tag public.
        """
        if record.public or await self._shared.get(self._authz_key(upstream, target, client)):
            return
        credential, public = self.effective(upstream, client)
        head = await upstream.head_manifest(target.repo, tag, credential)
        if public and head.digest == record.digest:
            self._meta.set_tag(target.scope, tag, TagRecord(record.digest, record.media_type, record.size,
                                                             record.checked_at, True))
        await self.remember_authorized(upstream, target, client)

    async def may_serve_stale(self, target: Target, record: TagRecord, client: Client,
                              upstream: Upstream) -> bool:
        """A stale tag goes only to clients who could see it without asking upstream."""
        if record.public:
            return True
        return bool(await self._shared.get(self._authz_key(upstream, target, client)))

    async def remember_authorized(self, upstream: Upstream, target: Target, client: Client) -> None:
        """Upstream just let this client's credential read the repository: remember it briefly."""
        await self._shared.set(self._authz_key(upstream, target, client), 1, self._cache.authz_ttl)

    def _authz_key(self, upstream: Upstream, target: Target, client: Client) -> str:
        return f"authz:{self.cred_id(upstream, client)}:{target.scope}"

    # the negative cache ----------------------------------------------------------------------
    async def known_missing(self, upstream: Upstream, target: Target, reference: str, client: Client) -> bool:
        """Upstream answered 404 for this reference to this credential within ``negative_ttl``."""
        return bool(await self._shared.get(self._negative_key(upstream, target, reference, client)))

    async def remember_missing(self, upstream: Upstream, target: Target, reference: str, client: Client) -> None:
        await self._shared.set(self._negative_key(upstream, target, reference, client), 1, self._cache.negative_ttl)

    def _negative_key(self, upstream: Upstream, target: Target, reference: str, client: Client) -> str:
        return f"neg:{target.scope}:{reference}:{self.cred_id(upstream, client)}"
