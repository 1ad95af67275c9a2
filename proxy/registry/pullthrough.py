"""The pull-through cache: upstream targets served from the store, filled from upstream once.

It decorates the local registry: a Target with no upstream goes straight to it.

Cache policy, rule by rule:
- digests are immutable: a stored manifest or blob is served without asking upstream, once the
  client is allowed to see it (``UpstreamAccess.authorize``);
- a tag is fresh for its upstream's ``tag_ttl`` after upstream last confirmed it; then it is
  revalidated with a HEAD, and the manifest is fetched with GET only when the digest changed;
- when upstream is rate-limited (429 / Retry-After) or its quota is below
  ``cache.low_quota_remaining``, a stale tag is served at once and revalidated in the background;
- when upstream is down, times out, answers 5xx or 429, whatever is stored is served stale; a
  revalidation that takes longer than ``cache.revalidate_timeout`` is left running in the
  background and the stored answer is served meanwhile;
- a 404 from upstream is remembered for ``cache.negative_ttl`` per credential
  (``upstream_access.py``);
- concurrent requests for the same manifest or blob share one upstream request.

Who may see stored upstream content is decided in ``upstream_access.py``; each cache decision
is counted in ``decisions.py``.

Upstream manifests must parse as manifests of their media type before they are stored or
served; anything else (an error page, a token document from a redirect) is ``UpstreamInvalid``.
Big ones are hashed and parsed in a worker thread, as pushed ones are.

When a tag moves or is deleted, the invalidation hook drops every answer remembered for it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from urllib.parse import urlencode

from proxy.config import CacheConfig, LimitsConfig
from proxy.errors import (BlobUnknown, Denied, ManifestInvalid, ManifestUnknown, OCIError,
                          SizeInvalid, StoreFull, TooManyRequests, Unavailable, UpstreamInvalid)
from proxy.metrics import Metrics
from proxy.oci.digest import Digest, is_digest
from proxy.oci.media import (DOCKER_MANIFEST, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST, OFF_LOOP_BYTES, accepts,
                             parse_manifest)
from proxy.oci.names import validate_tag
from proxy.registry.base import (BlobResult, CatalogPage, Chunk, Client, ManifestResult, PushedManifest,
                                 ReferrersResult, Registry, TagsPage, Target, UploadState)
from proxy.registry.decisions import CacheDecisions
from proxy.registry.fills import Fill, FillGroup
from proxy.registry.hot import HotManifest, HotSet
from proxy.registry.invalidation import Invalidation
from proxy.registry.tasks import BackgroundTasks
from proxy.registry.upstream_access import UpstreamAccess
from proxy.storage.blobs import BlobStore
from proxy.storage.hashing import ThreadedHasher
from proxy.storage.meta import MetaStore, TagRecord
from proxy.storage.shared import SharedCache
from proxy.upstream.answers import UpstreamManifest
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


_STALE_ERRORS = (Unavailable, TooManyRequests, UpstreamInvalid, StoreFull)  # then the stored answer is served
_GENERIC_TYPES = ("", "application/octet-stream", "text/plain", "application/json")


def _manifest_media_type(body: bytes, content_type: str) -> str:
    """The media type of an upstream manifest, once it parses as a manifest of that type.

    Upstream's Content-Type is kept when it names a manifest type; a generic one is replaced by
    the body's ``mediaType``. Anything that is not a manifest is refused (UpstreamInvalid).
    """
    declared = content_type if content_type not in _GENERIC_TYPES else None
    if declared is not None and declared not in MANIFEST_TYPES:
        raise UpstreamInvalid(f"upstream answered {declared[:100]!r}, which is no manifest media type")
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict) or doc.get("schemaVersion") not in (1, 2):
            raise ManifestInvalid("no schemaVersion 1 or 2")
        parsed = parse_manifest(body, declared)
    except (ValueError, TypeError, AttributeError, RecursionError, OCIError) as exc:
        raise UpstreamInvalid(f"upstream sent something that is not a manifest: {str(exc)[:200]}") from None
    media_type = declared or parsed.media_type
    if media_type not in MANIFEST_TYPES:
        raise UpstreamInvalid(f"upstream manifest has the unknown media type {str(media_type)[:100]!r}")
    if media_type in (OCI_MANIFEST, DOCKER_MANIFEST) and parsed.config_media_type is None:
        raise UpstreamInvalid("upstream image manifest has no config descriptor")
    return media_type


def _verified_media_type(body: bytes, expected: Digest, content_type: str) -> str:
    """The media type of an upstream manifest that hashes to ``expected`` (UpstreamInvalid if not)."""
    if Digest.of(body, expected.algorithm) != expected:
        raise UpstreamInvalid(f"upstream manifest does not match digest {expected}")
    return _manifest_media_type(body, content_type)


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
        self._invalidation = invalidation
        invalidation.subscribe(self._hot.drop_tag, self._hot.drop_tags)

    # helpers ---------------------------------------------------------------------------------
    def _upstream(self, target: Target) -> Upstream:
        return self._upstreams[target.upstream]  # Addressing only yields configured names

    def _quota_low(self, upstream: Upstream) -> bool:
        remaining = upstream.rate.remaining
        return upstream.rate.blocked() or (remaining is not None
                                           and remaining <= self._cache.low_quota_remaining)

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
            record, status = await self._manifest_by_digest(upstream, target, digest, client)
        else:
            validate_tag(reference)
            record, status = await self._manifest_by_tag(upstream, target, reference, client)
            if not accepts(accept, record.media_type):
                record, status = await self._manifest_for_accept(upstream, target, reference, accept, client)
        digest = Digest.parse(record.digest)
        body = self._blobs.read_bytes(digest)
        if body is None:  # evicted between lookup and read: fetch it again
            await self._fetch_manifest(upstream, target, str(digest), client)
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
        until = time.time() + upstream.config.tag_ttl
        if record.public:
            self._hot.set_fresh(target.scope, tag, record.digest, until)
        await self._shared.set(f"fresh:{target.scope}:{tag}", [record.digest, until, record.public],
                               upstream.config.tag_ttl)

    def _set_tag(self, target: Target, tag: str, record: TagRecord) -> None:
        """Store a tag's resolution; a tag that now names another digest drops its remembered answers."""
        previous = self._meta.tag(target.scope, tag)
        self._meta.set_tag(target.scope, tag, record)
        if previous is not None and previous.digest != record.digest:
            self._invalidation.tag_changed(target.scope, tag)

    def _delete_tag(self, target: Target, tag: str) -> None:
        self._meta.delete_tag(target.scope, tag)
        self._invalidation.tag_changed(target.scope, tag)

    async def _manifest_by_digest(self, upstream: Upstream, target: Target, digest: Digest,
                                  client: Client) -> tuple[TagRecord, str]:
        media_type = self._meta.manifest_type(str(digest))
        size = self._blobs.size(digest) if media_type else None
        if media_type and size is not None:
            await self._access.authorize(upstream, target, digest, client)
            self._decisions.count("manifest", "hit")
            return TagRecord(str(digest), media_type, size, 0.0), "hit"
        record, joined = await self._fetch_manifest(upstream, target, str(digest), client)
        if joined:
            await self._access.authorize(upstream, target, digest, client)
            return record, "coalesced"
        self._decisions.count("manifest", "miss")
        return record, "miss"

    async def _manifest_by_tag(self, upstream: Upstream, target: Target, tag: str,
                               client: Client, rechecked: bool = False) -> tuple[TagRecord, str]:
        record = self._meta.tag(target.scope, tag)
        if record is None or self._blobs.size(Digest.parse(record.digest)) is None:
            fetched, joined = await self._fetch_manifest(upstream, target, tag, client)
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
        lock_key = f"lock:{target.scope}:{tag}"
        owns_lock = False
        if not self._decisions.running(flight):
            owns_lock = await self._shared.add(lock_key, 1, upstream.config.first_byte_timeout + 5)
            if owns_lock and not rechecked and await self._shared.get(f"fresh:{target.scope}:{tag}"):
                # another worker revalidated between our look and our lock: use its answer
                await self._shared.delete(lock_key)
                return await self._manifest_by_tag(upstream, target, tag, client, rechecked=True)
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
                    await self._shared.delete(lock_key)

        try:
            try:
                fresh, joined = await asyncio.wait_for(self._decisions.coalesced("tag", flight, revalidate),
                                                       self._cache.revalidate_timeout)
            except asyncio.TimeoutError:
                # upstream is slow or hung: serve what we have; the revalidation goes on
                if await self._access.may_serve_stale(target, record, client, upstream):
                    self._decisions.count("tag", "stale")
                    return record, "stale"
                fresh, joined = await self._decisions.coalesced("tag", flight, revalidate)
        except _STALE_ERRORS:
            if await self._access.may_serve_stale(target, record, client, upstream):
                self._decisions.count("tag", "stale")
                return record, "stale"
            raise
        except ManifestUnknown:
            self._delete_tag(target, tag)
            raise
        if not joined:
            self._decisions.count("tag", "revalidated")
        return fresh, "revalidated"

    async def _revalidate_quietly(self, upstream: Upstream, target: Target, tag: str, client: Client) -> None:
        record = self._meta.tag(target.scope, tag)
        if record is None:
            return
        try:
            await self._decisions.coalesced("tag", ("revalidate", target.scope, tag, self._access.cred_id(upstream, client)),
                                  lambda: self._revalidate(upstream, target, tag, client, record))
        except OCIError:
            pass  # served stale already; the next request tries again

    async def _revalidate(self, upstream: Upstream, target: Target, tag: str, client: Client,
                          record: TagRecord) -> TagRecord:
        """HEAD the tag; GET the manifest only when the digest changed (Docker Hub counts GETs)."""
        credential, public = self._access.effective(upstream, client)
        digest = (await upstream.head_manifest(target.repo, tag, credential)).digest
        if digest == record.digest and self._blobs.size(Digest.parse(digest)) is not None:
            fresh = TagRecord(record.digest, record.media_type, record.size, time.time(), public or record.public)
            self._meta.set_tag(target.scope, tag, fresh)
            self._meta.grant(record.digest, target.scope, public)
            await self._access.remember_authorized(upstream, target, client)
            await self._mark_fresh(upstream, target, tag, fresh)
            return fresh
        fetched, _ = await self._fetch_manifest(upstream, target, tag, client, coalesce=False)
        return fetched

    async def _manifest_for_accept(self, upstream: Upstream, target: Target, tag: str,
                                   accept: list[str], client: Client) -> tuple[TagRecord, str]:
        """A client that accepts none of the cached tag's type gets upstream's answer for its Accept."""
        credential, public = self._access.effective(upstream, client)
        answer = await upstream.get_manifest(target.repo, tag, credential, accept=", ".join(accept))
        record = await self._store_manifest(answer, target, tag, public)
        if not accepts(accept, record.media_type):
            raise ManifestUnknown(f"no manifest of an accepted media type for tag {tag}")
        self._decisions.count("manifest", "miss")
        return record, "miss"

    async def _fetch_manifest(self, upstream: Upstream, target: Target, reference: str,
                              client: Client, coalesce: bool = True) -> tuple[TagRecord, bool]:
        """GET a manifest (by tag or digest) once for all concurrent askers with this credential."""
        credential, public = self._access.effective(upstream, client)
        if await self._access.known_missing(upstream, target, reference, client):
            self._decisions.count("manifest", "negative")
            raise ManifestUnknown(f"manifest {reference} unknown upstream (cached answer)")

        async def fetch() -> TagRecord:
            try:
                answer = await upstream.get_manifest(target.repo, reference, credential)
            except ManifestUnknown:
                await self._access.remember_missing(upstream, target, reference, client)
                raise
            record = await self._store_manifest(answer, target, reference, public)
            if not is_digest(reference):
                self._set_tag(target, reference, record)
                await self._mark_fresh(upstream, target, reference, record)
            await self._access.remember_authorized(upstream, target, client)
            return record

        if not coalesce:
            return await fetch(), False
        flight = ("manifest", target.scope, reference, self._access.cred_id(upstream, client))
        return await self._decisions.coalesced("manifest", flight, fetch)

    async def _store_manifest(self, answer: UpstreamManifest, target: Target, reference: str,
                              public: bool) -> TagRecord:
        """Verify and store a manifest body exactly as upstream sent it."""
        if is_digest(reference):
            expected = Digest.parse(reference)
        else:
            expected = answer.declared_digest() or Digest.of(answer.body)
        body, declared = answer.body, answer.media_type
        if len(body) > OFF_LOOP_BYTES:  # hashing and parsing grow with the body: not on the loop
            media_type = await asyncio.to_thread(_verified_media_type, body, expected, declared)
        else:
            media_type = _verified_media_type(body, expected, declared)
        if self._blobs.size(expected) is None:
            self._blobs.put_bytes(body, expected)
        self._meta.set_manifest_type(str(expected), media_type)
        self._meta.grant(str(expected), target.scope, public)
        return TagRecord(str(expected), media_type, len(body), time.time(), public)

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
        except _STALE_ERRORS:
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
            record, _ = await self._manifest_by_tag(upstream, target, f"{digest.algorithm}-{digest.hex}", client)
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
