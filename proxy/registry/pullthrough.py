"""The pull-through cache: upstream targets served from the store, filled from upstream once.

It decorates the local registry: a Target with no upstream goes straight to it; pushes and
deletes under an upstream's name are Denied (upstreams are read-only mirrors). Pulls of an
offline upstream's targets (``offline: true``) go to ``offline.py``, which answers from the store
and never contacts upstream. For the other upstream targets it routes each request to the
concern that rules it:
- who may see stored upstream content, the authz and negative caches: ``upstream_access.py``;
- when a tag is answered, revalidated or served stale: ``tagpolicy.py``;
- fetching, verifying and storing manifests: ``manifestcache.py``;
- blobs and their fills: ``blobcache.py`` (over ``fills.py``);
- tag lists and referrers: ``listings.py``;
- counting each decision, merging concurrent requests: ``decisions.py``.

Public manifests are answered from memory (``hot.py``): by digest for good, by a tag while its
freshness holds; the invalidation hook drops a tag's remembered answers when it moves.
"""

from __future__ import annotations

import math

from proxy.config import CacheConfig, LimitsConfig
from proxy.errors import Denied, Unavailable
from proxy.metrics import Metrics
from proxy.oci.digest import Digest, is_digest
from proxy.oci.media import accepts
from proxy.oci.names import validate_tag
from proxy.registry.base import (BlobResult, CatalogPage, Chunk, Client, ManifestResult, PushedManifest,
                                 ReferrersResult, Registry, TagsPage, Target, UploadState)
from proxy.registry.blobcache import BlobCache
from proxy.registry.cluster_flight import ClusterFlight
from proxy.registry.decisions import CacheDecisions
from proxy.registry.hot import HotManifest, HotSet
from proxy.registry.invalidation import Invalidation
from proxy.registry.listings import UpstreamLists
from proxy.registry.manifestcache import ManifestCache
from proxy.registry.offline import OfflineRegistry
from proxy.registry.tagpolicy import TagPolicy
from proxy.registry.peer_flight import PeerFlight
from proxy.registry.tasks import BackgroundTasks
from proxy.registry.upstream_access import UpstreamAccess
from proxy.storage.blobs import BlobStore
from proxy.storage.lost_content import LostContent
from proxy.storage.meta import MetaStore
from proxy.storage.shared import SharedCache
from proxy.upstream.client import Upstream
from proxy.upstream.peer import PeerBlobs


class PullThroughRegistry:
    """Registry over upstreams, falling back to ``local`` for local targets."""

    def __init__(self, local: Registry, upstreams: dict[str, Upstream], blobs: BlobStore,
                 meta: MetaStore, shared: SharedCache, metrics: Metrics, cache: CacheConfig,
                 limits: LimitsConfig, tasks: BackgroundTasks, invalidation: Invalidation,
                 hot_manifests: bool = True, offline: frozenset[str] = frozenset()) -> None:
        self._local = local
        self._upstreams = upstreams
        self._blobs = blobs
        self._meta = meta
        decisions = CacheDecisions(metrics)
        self._decisions = decisions
        self._hot = HotSet(enabled=hot_manifests)
        invalidation.subscribe(self._hot.drop_tag, self._hot.drop_tags)
        access = UpstreamAccess(meta, shared, cache)
        self._flight = ClusterFlight(shared)
        self._manifests = ManifestCache(blobs, meta, access, decisions, self._flight)
        lost = LostContent(blobs, meta)  # asked by the stale path and the offline one alike
        self._tag_policy = TagPolicy(blobs, meta, shared, cache, tasks, self._hot, invalidation, access,
                                     self._manifests, decisions, lost)
        self._blob_cache = BlobCache(blobs, meta, metrics, cache, limits, tasks, access, decisions)
        self._lists = UpstreamLists(blobs, meta, access, self._tag_policy, decisions)
        self.fills = self._blob_cache.fills
        self.blob_cache = self._blob_cache  # app.py attaches object storage to it (issue 12)
        self._offline = OfflineRegistry(blobs, meta, decisions, offline, lost)
        self._offline_names = offline  # a set membership check per request: the online path stays as fast

    def join_cluster(self, peers: PeerFlight, client: PeerBlobs) -> None:
        """Replicas on disks of their own: blobs and manifests fetched once for every replica, the
        others copy them from the replica that fetched them."""
        self._blob_cache.peers, self._blob_cache.peers_client = peers, client
        self._manifests.peers = client
        self._flight.own_url = peers.own_url

    def _upstream(self, target: Target) -> Upstream:
        return self._upstreams[target.upstream]  # Addressing only yields configured names

    # pull ------------------------------------------------------------------------------------
    async def manifest(self, target: Target, reference: str, accept: list[str], client: Client,
                       head: bool) -> ManifestResult:
        if target.upstream is None:
            return await self._local.manifest(target, reference, accept, client, head)
        if target.upstream in self._offline_names:
            return await self._offline.manifest(target, reference, accept, client, head)
        hot, until = self._hot_manifest(target, reference)
        if hot is not None and accepts(accept, hot.media_type):
            self._decisions.count("manifest" if is_digest(reference) else "tag", "hit")
            return ManifestResult(hot.digest, hot.media_type, len(hot.body), hot.body, "hit", until)
        upstream = self._upstream(target)
        if is_digest(reference):
            digest = Digest.parse(reference)
            record, status = await self._manifests.by_digest(upstream, target, digest, client)
        else:
            validate_tag(reference)
            record, status = await self._tag_policy.resolve(upstream, target, reference, client)
            if not accepts(accept, record.media_type):
                record, status = await self._manifests.for_accept(upstream, target, reference, accept, client)
        digest = Digest.parse(record.digest)
        body = self._blobs.read_bytes(digest)
        if body is None:  # evicted between lookup and read: fetch it again
            await self._manifests.fetch(upstream, target, str(digest), client)
            body = self._blobs.read_bytes(digest)
            if body is None:
                raise Unavailable("manifest vanished from the store")
        if self._meta.visibility(record.digest).public:
            self._hot.add_manifest(HotManifest(digest, record.media_type, body))
        return ManifestResult(digest, record.media_type, record.size, None if head else body, status)

    def _hot_manifest(self, target: Target, reference: str) -> tuple[HotManifest | None, float]:
        """A public manifest answered from memory, and until when that answer holds for everyone:
        by digest for good, by a tag while it is fresh."""
        until = math.inf
        if not is_digest(reference):
            freshness = self._hot.freshness(target.scope, reference)
            if freshness is None:
                return None, 0.0
            reference, until = freshness
        hot = self._hot.manifest(reference)
        if hot is None or not self._meta.visibility(reference).public:
            return None, 0.0
        return hot, until

    async def blob(self, target: Target, digest: Digest, client: Client, head: bool) -> BlobResult:
        if target.upstream is None:
            return await self._local.blob(target, digest, client, head)
        if target.upstream in self._offline_names:
            return await self._offline.blob(target, digest, client, head)
        return await self._blob_cache.blob(self._upstream(target), target, digest, client, head)

    async def tags(self, target: Target, n: int | None, last: str | None, client: Client) -> TagsPage:
        if target.upstream is None:
            return await self._local.tags(target, n, last, client)
        if target.upstream in self._offline_names:
            return await self._offline.tags(target, n, last, client)
        return await self._lists.tags(self._upstream(target), target, n, last, client)

    async def referrers(self, target: Target, digest: Digest, artifact_type: str | None,
                        client: Client) -> ReferrersResult:
        if target.upstream is None:
            return await self._local.referrers(target, digest, artifact_type, client)
        if target.upstream in self._offline_names:
            return await self._offline.referrers(target, digest, artifact_type, client)
        return await self._lists.referrers(self._upstream(target), target, digest, artifact_type, client)

    # push and manage: local repositories only; upstreams are read-only mirrors ---------------
    def _local_only(self, target: Target, action: str) -> Registry:
        if target.upstream is not None:
            raise Denied(f"{action} refused: {target.upstream}/{target.repo} is in the namespace of the "
                         f"upstream registry {target.upstream}, which Wharf only mirrors; push to a "
                         f"local repository instead: a name without the {target.upstream}/ prefix or "
                         f"ns= (with a default upstream, under a namespace declared in local_namespaces)")
        return self._local

    async def start_upload(self, target: Target, algorithm: str, client: Client) -> UploadState:
        return await self._local_only(target, "push").start_upload(target, algorithm, client)

    async def mount_blob(self, target: Target, digest: Digest, source: Target | None, client: Client) -> bool:
        return await self._local_only(target, "push").mount_blob(target, digest, source, client)

    async def upload_chunk(self, target: Target, upload_id: str, chunk: Chunk, client: Client) -> UploadState:
        return await self._local_only(target, "push").upload_chunk(target, upload_id, chunk, client)

    async def upload_status(self, target: Target, upload_id: str, client: Client) -> UploadState:
        return await self._local_only(target, "push").upload_status(target, upload_id, client)

    async def finish_upload(self, target: Target, upload_id: str, digest: Digest, chunk: Chunk | None,
                            client: Client) -> Digest:
        return await self._local_only(target, "push").finish_upload(target, upload_id, digest, chunk, client)

    async def cancel_upload(self, target: Target, upload_id: str, client: Client) -> None:
        await self._local_only(target, "push").cancel_upload(target, upload_id, client)

    async def put_manifest(self, target: Target, reference: str, body: bytes, content_type: str | None,
                           tags: list[str], client: Client) -> PushedManifest:
        return await self._local_only(target, "push").put_manifest(target, reference, body, content_type,
                                                                   tags, client)

    async def delete_manifest(self, target: Target, reference: str, client: Client) -> None:
        await self._local_only(target, "delete").delete_manifest(target, reference, client)

    async def delete_blob(self, target: Target, digest: Digest, client: Client) -> None:
        await self._local_only(target, "delete").delete_blob(target, digest, client)

    async def catalog(self, n: int | None, last: str | None, client: Client) -> CatalogPage:
        return await self._local.catalog(n, last, client)
