"""The pull-through cache: upstream targets served from the store, filled from upstream once.

It decorates the local registry: a Target with no upstream goes straight to it.

What it delegates, for upstream targets:
- who may see stored upstream content, the authz and negative caches: ``upstream_access.py``;
- when a tag is answered, revalidated or served stale: ``tagpolicy.py``;
- fetching, verifying and storing manifests: ``manifestcache.py``;
- counting each decision, merging concurrent requests: ``decisions.py``.

Rules for blobs:
- digests are immutable: a stored blob is served without asking upstream, once the client is
  allowed to see it (``UpstreamAccess.authorize``);
- concurrent requests for the same blob share one upstream request (a fill, ``fills.py``).

Public manifests are answered from memory (``hot.py``): by digest for good, by a tag while its
freshness holds; the invalidation hook drops a tag's remembered answers when it moves.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from urllib.parse import urlencode

from proxy.config import CacheConfig, LimitsConfig
from proxy.errors import BlobUnknown, Denied, ManifestUnknown, OCIError, SizeInvalid, StoreFull, Unavailable
from proxy.metrics import Metrics
from proxy.oci.digest import Digest, is_digest
from proxy.oci.media import OCI_INDEX, accepts
from proxy.oci.names import validate_tag
from proxy.registry.base import (BlobResult, CatalogPage, Chunk, Client, ManifestResult, PushedManifest,
                                 ReferrersResult, Registry, TagsPage, Target, UploadState)
from proxy.registry.decisions import CacheDecisions
from proxy.registry.fills import Fill, FillGroup
from proxy.registry.hot import HotManifest, HotSet
from proxy.registry.invalidation import Invalidation
from proxy.registry.manifestcache import ManifestCache
from proxy.registry.tagpolicy import STALE_ERRORS, TagPolicy
from proxy.registry.tasks import BackgroundTasks
from proxy.registry.upstream_access import UpstreamAccess
from proxy.storage.blobs import BlobStore
from proxy.storage.hashing import ThreadedHasher
from proxy.storage.meta import MetaStore
from proxy.storage.shared import SharedCache
from proxy.upstream.auth import Credential
from proxy.upstream.client import Upstream


def page_tags(body: bytes, n: int, last: str | None) -> tuple[bytes, str | None]:
    """Apply ``n``/``last`` ourselves when upstream ignored them (distribution 2.8 does)."""
    try:
        doc = json.loads(body)
        tags = sorted(t for t in doc.get("tags") or [] if last is None or t > last)
    except (ValueError, AttributeError, TypeError):
        return body, None
    if len(doc.get("tags") or []) <= n and last is None:
        return body, None
    page = tags[:n]
    doc["tags"] = page
    more = len(tags) > n and page
    return json.dumps(doc).encode(), (urlencode({"n": n, "last": page[-1]}) if more else None)


_MAX_TAG_READERS = 256  # credentials remembered per stale tag list, the most recent
MAX_PAGE = 999_999_999  # the largest ``n`` a client may ask for (``proxy.http.pull.page_size``)
EMPTY_INDEX = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()


class PullThroughRegistry:
    """Registry over upstreams, falling back to ``local`` for local targets."""

    def __init__(self, local: Registry, upstreams: dict[str, Upstream], blobs: BlobStore,
                 meta: MetaStore, shared: SharedCache, metrics: Metrics, cache: CacheConfig,
                 limits: LimitsConfig, tasks: BackgroundTasks, invalidation: Invalidation,
                 hot_manifests: bool = True) -> None:
        self._local = local
        self._upstreams = upstreams
        self._blobs = blobs
        self._meta = meta
        self._shared = shared
        self._metrics = metrics
        self._cache = cache
        self._limits = limits
        self._tasks = tasks
        self._decisions = CacheDecisions(metrics)
        self._access = UpstreamAccess(meta, shared, cache)
        self.fills = FillGroup(tasks, blobs)
        self._hot = HotSet(enabled=hot_manifests)
        invalidation.subscribe(self._hot.drop_tag, self._hot.drop_tags)
        self._manifests = ManifestCache(blobs, meta, self._access, self._decisions)
        self._tag_policy = TagPolicy(blobs, meta, shared, cache, tasks, self._hot, invalidation, self._access,
                                     self._manifests, self._decisions)

    # helpers ---------------------------------------------------------------------------------
    def _upstream(self, target: Target) -> Upstream:
        return self._upstreams[target.upstream]  # Addressing only yields configured names

    # manifests -------------------------------------------------------------------------------
    async def manifest(self, target: Target, reference: str, accept: list[str], client: Client,
                       head: bool) -> ManifestResult:
        if target.upstream is None:
            return await self._local.manifest(target, reference, accept, client, head)
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

    # blobs -----------------------------------------------------------------------------------
    async def blob(self, target: Target, digest: Digest, client: Client, head: bool) -> BlobResult:
        if target.upstream is None:
            return await self._local.blob(target, digest, client, head)
        upstream = self._upstream(target)
        size = self._blobs.size(digest)
        if size is not None:
            await self._access.authorize(upstream, target, digest, client, blob=True)
            self._decisions.count("blob", "hit")
            return BlobResult(digest, size, path=self._blobs.path(digest),
                              reading=lambda: self._blobs.reading(digest), cache_status="hit")
        credential, public = self._access.effective(upstream, client)
        if self.fills.get(digest) is None and await self._access.known_missing(upstream, target, str(digest), client):
            self._decisions.count("blob", "negative")
            raise BlobUnknown(f"blob {digest} unknown upstream (cached answer)")
        # no await between looking for a running fill and starting one: that is the single flight
        fill = self.fills.get(digest)
        if fill is not None:
            await asyncio.shield(fill.started)
            await self._access.authorize(upstream, target, digest, client, blob=True)
            self._decisions.count("blob", "coalesced")
            status = "coalesced"
        else:
            if head:
                return await self._head_upstream_blob(upstream, target, digest, client)
            fill = self.fills.start(
                digest, lambda f, temp, size_file: self._run_fill(f, temp, size_file, upstream, target,
                                                                  credential, public),
                self._cache.fill_timeout)
            try:
                await asyncio.shield(fill.started)
            except BlobUnknown:
                await self._access.remember_missing(upstream, target, str(digest), client)
                raise
            self._decisions.count("blob", "miss")
            status = "miss"
        if head:
            return BlobResult(digest, fill.size, cache_status=status)
        return BlobResult(digest, fill.size, segments=fill.segments, cache_status=status)

    async def _head_upstream_blob(self, upstream: Upstream, target: Target, digest: Digest,
                                  client: Client) -> BlobResult:
        credential, public = self._access.effective(upstream, client)
        try:
            answer = await upstream.head_blob(target.repo, digest, credential)
        except BlobUnknown:
            await self._access.remember_missing(upstream, target, str(digest), client)
            raise
        self._meta.grant(str(digest), target.scope, public)
        self._decisions.count("blob", "miss")
        return BlobResult(digest, answer.size, cache_status="miss")

    async def _run_fill(self, fill: Fill, temp_path: Path, size_path: Path, upstream: Upstream,
                        target: Target, credential: Credential | None, public: bool) -> None:
        """Download one blob into the store; readers here and in other workers follow it."""
        async with upstream.open_blob(target.repo, fill.digest, credential) as source:
            writer = None
            try:
                size = source.size
                if size is not None and size > self._limits.max_layer_bytes:
                    raise SizeInvalid(f"blob of {size} bytes exceeds the {self._limits.max_layer_bytes} byte limit")
                writer = self._blobs.new_writer(fill.digest.algorithm, temp_path=temp_path, hash_inline=False,
                                                max_size=size if size is not None else self._limits.max_layer_bytes,
                                                expected_size=size)
                hasher = ThreadedHasher(fill.digest.algorithm)
                size_path.write_text(str(size if size is not None else -1))
                self._meta.grant(str(fill.digest), target.scope, public)
                fill.begin(writer, size)
                self._metrics.fills_in_flight.inc()
                try:
                    async for chunk in source:
                        writer.write(chunk)
                        await hasher.update(chunk)
                    path = writer.commit(fill.digest, size, actual=await hasher.digest())
                except OCIError:
                    writer.abort()
                    raise
                except Exception as exc:
                    writer.abort()
                    raise Unavailable(f"download of {fill.digest} from {upstream.name} broke: "
                                      f"{type(exc).__name__}") from None
                finally:
                    self._metrics.fills_in_flight.dec()
                fill.finish(path)
            except BaseException:
                if writer is not None and not writer.closed:
                    writer.abort()
                if self._blobs.size(fill.digest) is None:
                    # who may see it was granted for the followers; bytes that never arrived grant nothing
                    self._meta.forget(str(fill.digest))
                raise

    # tags and referrers ----------------------------------------------------------------------
    async def tags(self, target: Target, n: int | None, last: str | None, client: Client) -> TagsPage:
        """Pass the tag list through; keep one copy of the whole list to serve when upstream is down.

        The copy is upstream's answer to a request for the whole list (no ``last``, and no ``n``
        or an answer without a next page); a paged request while upstream is down is cut from
        it. One copy per repository, whatever ``n`` and ``last`` clients send: queries cannot
        make Wharf store a copy each. It remembers the last ``_MAX_TAG_READERS`` credentials
        upstream let read the list. Keeping the copy is best effort (not on a full disk).
        """
        if target.upstream is None:
            return await self._local.tags(target, n, last, client)
        upstream = self._upstream(target)
        credential, public = self._access.effective(upstream, client)
        params = {k: str(v) for k, v in (("n", n), ("last", last)) if v is not None}
        key = f"tags:{target.scope}"
        try:
            answer = await upstream.tags(target.repo, params, credential)
        except STALE_ERRORS:
            saved = self._meta.document(key)
            if saved and (saved["public"] or credential is not None and credential.id in saved["readers"]):
                if n is None and last is None:
                    self._decisions.count("tags", "stale")
                    return TagsPage(saved["body"].encode(), saved["link"], "stale")
                if saved["link"] is None:  # the whole list: cut the page asked for
                    self._decisions.count("tags", "stale")
                    body, link = page_tags(saved["body"].encode(), MAX_PAGE if n is None else n, last)
                    return TagsPage(body, link, "stale")
            raise
        body, link = answer.body, answer.next_query
        if last is None and (n is None or link is None):
            saved = self._meta.document(key) or {"readers": []}
            readers = [r for r in saved.get("readers", []) if credential is None or r != credential.id]
            if credential is not None and not public:
                readers.append(credential.id)
            try:
                self._meta.set_document(key, {"body": body.decode(), "link": link if n is None else None,
                                              "public": public or saved.get("public", False),
                                              "readers": readers[-_MAX_TAG_READERS:]})
            except StoreFull:
                pass  # the copy is for later; upstream's answer goes through on a full disk
        if link is None and n is not None:
            body, link = page_tags(body, n, last)
        return TagsPage(body, link, "miss")

    async def referrers(self, target: Target, digest: Digest, artifact_type: str | None,
                        client: Client) -> ReferrersResult:
        """Upstream's referrers list; where upstream has no referrers API, its fallback tag or none."""
        if target.upstream is None:
            return await self._local.referrers(target, digest, artifact_type, client)
        upstream = self._upstream(target)
        credential, _ = self._access.effective(upstream, client)
        try:
            answer = await upstream.referrers(target.repo, digest, artifact_type, credential)
            return ReferrersResult(answer.body, answer.media_type, answer.filters_applied)
        except ManifestUnknown:
            pass
        try:
            record, _ = await self._tag_policy.resolve(upstream, target, f"{digest.algorithm}-{digest.hex}", client)
        except ManifestUnknown:
            return ReferrersResult(EMPTY_INDEX, OCI_INDEX)
        body = self._blobs.read_bytes(Digest.parse(record.digest)) or EMPTY_INDEX
        return ReferrersResult(body, OCI_INDEX)

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
