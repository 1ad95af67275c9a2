"""Tag policy: when a stored tag is answered, revalidated upstream, or served stale.

Rules:
- a tag is fresh for its upstream's ``tag_ttl`` after upstream last confirmed it (to any worker
  or replica: the confirmation is shared); then it is revalidated with a HEAD, and the manifest
  is fetched with GET only when the digest changed;
- when upstream is rate-limited (429 / Retry-After) or its quota is below
  ``cache.low_quota_remaining``, a stale tag is served at once and revalidated in the background;
- when upstream is down, times out, answers 5xx or 429, whatever is stored is served stale; a
  revalidation that takes longer than ``cache.revalidate_timeout`` is left running in the
  background and the stored answer is served meanwhile; but not an image the store lost part of
  (``has_lost_content``, remembered by ``LostContent``: a blob it held was evicted, or every
  platform it held of an index): that answers upstream's error, as a tag never cached does
  (503 UNAVAILABLE, 429), not a manifest the client would fail to pull (blobs never fetched
  through here do not count: the client may have them);
- one revalidation per tag and credential runs at a time; while another worker or replica holds
  the tag's revalidation lock, its stored answer is served ("coalesced");
- stale answers go only to clients who could see them without asking upstream
  (``UpstreamAccess.may_serve_stale``);
- a tag upstream answers 404 for is deleted; when a tag moves or is deleted, the invalidation
  hook drops every answer remembered for it.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from proxy.config import CacheConfig
from proxy.errors import ManifestUnknown, OCIError, StoreFull, TooManyRequests, Unavailable, UpstreamInvalid
from proxy.oci.digest import Digest
from proxy.registry.base import Client, Target
from proxy.registry.decisions import CacheDecisions
from proxy.registry.hot import HotSet
from proxy.registry.invalidation import Invalidation
from proxy.registry.manifestcache import ManifestCache
from proxy.registry.tasks import BackgroundTasks
from proxy.registry.upstream_access import UpstreamAccess
from proxy.storage.blobs import BlobStore
from proxy.storage.lost_content import LostContent
from proxy.storage.meta import MetaStore, TagRecord
from proxy.storage.shared import SharedCache
from proxy.upstream.client import Upstream

STALE_ERRORS = (Unavailable, TooManyRequests, UpstreamInvalid, StoreFull)  # then the stored answer is served


class TagPolicy:
    """Resolves an upstream tag to a stored manifest record, asking upstream only when the rules say."""

    def __init__(self, blobs: BlobStore, meta: MetaStore, shared: SharedCache, cache: CacheConfig,
                 tasks: BackgroundTasks, hot: HotSet, invalidation: Invalidation, access: UpstreamAccess,
                 manifests: ManifestCache, decisions: CacheDecisions, lost: LostContent) -> None:
        self._blobs = blobs
        self._lost = lost
        self._meta = meta
        self._shared = shared
        self._cache = cache
        self._tasks = tasks
        self._hot = hot
        self._invalidation = invalidation
        self._access = access
        self._manifests = manifests
        self._decisions = decisions

    async def resolve(self, upstream: Upstream, target: Target, tag: str, client: Client,
                      rechecked: bool = False) -> tuple[TagRecord, str]:
        """The tag's record and how it was answered (hit, miss, stale, coalesced, revalidated)."""
        record = self._meta.tag(target.scope, tag)
        if record is None or self._blobs.size(Digest.parse(record.digest)) is None:
            fetched, joined = await self.fetch(upstream, target, tag, client)
            if joined:
                digest = Digest.parse(fetched.digest)
                await self._access.authorize(upstream, target, digest, client)
                return fetched, "coalesced"
            self._decisions.count("tag", "miss")
            return fetched, "miss"
        if not await self._is_fresh(target, tag, record.digest):
            latest = self._meta.tag(target.scope, tag, fresh=True)  # another worker may have moved it
            if latest is not None and latest.digest != record.digest \
                    and self._blobs.size(Digest.parse(latest.digest)) is not None:
                record = latest
        if await self._is_fresh(target, tag, record.digest):
            await self._access.authorize_tag(upstream, target, tag, record, client)
            self._decisions.count("tag", "hit")
            return record, "hit"
        if self._quota_low(upstream) and await self._access.may_serve_stale(target, record, client, upstream):
            self._tasks.spawn(self._revalidate_quietly(upstream, target, tag, client),
                              name=f"revalidate {target.scope}:{tag}")
            self._decisions.count("tag", "stale")
            return record, "stale"
        flight = ("revalidate", target.scope, tag, self._access.cred_id(upstream, client))
        lock_key, lock_token = f"lock:{target.scope}:{tag}", secrets.token_hex(8)
        owns_lock = False
        if not self._decisions.running(flight):
            owns_lock = await self._shared.add(lock_key, lock_token, upstream.config.first_byte_timeout + 5)
            if owns_lock and not rechecked and await self._shared.get(f"fresh:{target.scope}:{tag}"):
                # another worker revalidated between our look and our lock: use its answer
                await self._shared.release(lock_key, lock_token)
                return await self.resolve(upstream, target, tag, client, rechecked=True)
            if not owns_lock and await self._access.may_serve_stale(target, record, client, upstream):
                # another worker or replica is revalidating this tag right now: its answer is
                # moments away, and what we hold was right until just now
                self._decisions.count("tag", "coalesced")
                return record, "coalesced"

        async def revalidate() -> TagRecord:
            try:
                return await self._revalidate(upstream, target, tag, client, record)
            finally:
                if owns_lock:
                    await self._shared.release(lock_key, lock_token)

        try:
            try:
                fresh, joined = await asyncio.wait_for(self._decisions.coalesced("tag", flight, revalidate),
                                                       self._cache.revalidate_timeout)
            except asyncio.TimeoutError:
                # upstream is slow or hung: serve what we have; the revalidation goes on
                if await self._may_serve_stale_whole(target, record, client, upstream):
                    self._decisions.count("tag", "stale")
                    return record, "stale"
                fresh, joined = await self._decisions.coalesced("tag", flight, revalidate)
        except STALE_ERRORS:
            if await self._may_serve_stale_whole(target, record, client, upstream):
                self._decisions.count("tag", "stale")
                return record, "stale"
            raise
        except ManifestUnknown:
            self._delete_tag(target, tag)
            raise
        if not joined:
            self._decisions.count("tag", "revalidated")
        return fresh, "revalidated"

    async def _may_serve_stale_whole(self, target: Target, record: TagRecord, client: Client,
                                     upstream: Upstream) -> bool:
        """Upstream cannot be asked: the stored answer goes to a client who may see it, and only when
        the store lost none of the image (else the client would fail on a blob evicted here)."""
        if not await self._access.may_serve_stale(target, record, client, upstream):
            return False
        return not await self._lost.lost(record.digest, record.media_type)

    async def fetch(self, upstream: Upstream, target: Target, tag: str, client: Client,
                    coalesce: bool = True) -> tuple[TagRecord, bool]:
        """GET the tag's manifest from upstream; store the tag's resolution and its freshness."""
        async def learned(record: TagRecord) -> None:
            self._set_tag(target, tag, record)
            await self._mark_fresh(upstream, target, tag, record)

        return await self._manifests.fetch(upstream, target, tag, client, coalesce=coalesce, learned=learned)

    # freshness -------------------------------------------------------------------------------
    async def _is_fresh(self, target: Target, tag: str, digest: str) -> bool:
        """Whether upstream confirmed ``tag`` → ``digest`` within the TTL (any worker or replica)."""
        if self._hot.fresh_digest(target.scope, tag) == digest:
            return True
        value = await self._shared.get(f"fresh:{target.scope}:{tag}")
        if not value or value[0] != digest:
            return False
        if len(value) > 2 and value[2]:  # only public tags are answered from memory
            self._hot.set_fresh(target.scope, tag, digest, value[1])
        return True

    async def _mark_fresh(self, upstream: Upstream, target: Target, tag: str, record: TagRecord) -> None:
        until = (record.checked_at or time.time()) + upstream.config.tag_ttl  # from upstream's answer
        if record.public:
            self._hot.set_fresh(target.scope, tag, record.digest, until)
        await self._shared.set(f"fresh:{target.scope}:{tag}", [record.digest, until, record.public],
                               until - time.time())

    def _quota_low(self, upstream: Upstream) -> bool:
        remaining = upstream.rate.remaining
        return upstream.rate.blocked() or (remaining is not None
                                           and remaining <= self._cache.low_quota_remaining)

    def _set_tag(self, target: Target, tag: str, record: TagRecord) -> None:
        """Store a tag's resolution; a tag that now names another digest drops its remembered answers."""
        previous = self._meta.tag(target.scope, tag)
        self._meta.set_tag(target.scope, tag, record)
        if previous is not None and previous.digest != record.digest:
            self._invalidation.tag_changed(target.scope, tag)

    def _delete_tag(self, target: Target, tag: str) -> None:
        self._meta.delete_tag(target.scope, tag)
        self._invalidation.tag_changed(target.scope, tag)

    # revalidation ----------------------------------------------------------------------------
    async def _revalidate_quietly(self, upstream: Upstream, target: Target, tag: str, client: Client) -> None:
        record = self._meta.tag(target.scope, tag)
        if record is None:
            return
        try:
            await self._decisions.coalesced(
                "tag", ("revalidate", target.scope, tag, self._access.cred_id(upstream, client)),
                lambda: self._revalidate(upstream, target, tag, client, record))
        except OCIError:
            pass  # served stale already; the next request tries again

    async def _revalidate(self, upstream: Upstream, target: Target, tag: str, client: Client,
                          record: TagRecord) -> TagRecord:
        """HEAD the tag; GET the manifest only when the digest changed (Docker Hub counts GETs)."""
        credential, public = self._access.effective(upstream, client)
        head = await upstream.head_manifest(target.repo, tag, credential)
        digest = head.digest
        if digest == record.digest and self._blobs.size(Digest.parse(digest)) is not None:
            fresh = TagRecord(record.digest, record.media_type, record.size, time.time(), public or record.public)
            self._meta.set_tag(target.scope, tag, fresh)
            self._meta.grant(record.digest, target.scope, public)
            await self._access.remember_authorized(upstream, target, client)
            await self._mark_fresh(upstream, target, tag, fresh)
            return fresh
        fetched, _ = await self.fetch(upstream, target, tag, client, coalesce=False)
        return fetched
