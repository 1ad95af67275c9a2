"""Upstream blobs: served from the store, or filled from upstream once (``fills.py``).

Rules:
- digests are immutable: a stored blob is served without asking upstream, once the client is
  allowed to see it (``UpstreamAccess.authorize``);
- a blob not stored is downloaded by one fill that every concurrent requester follows as it
  grows; a HEAD asks upstream's HEAD and downloads nothing, unless a fill is already running;
- a blob larger than ``limits.max_layer_bytes`` (announced or received) is refused;
- who may see a blob is granted as its fill begins, for the followers, and withdrawn if its
  bytes never arrive;
- a 404 is remembered per credential (the negative cache of ``UpstreamAccess``), unless a fill
  of the digest is running;
- with object storage (``storage.backend: s3``), a local miss the negative cache does not answer
  asks the bucket before upstream (a bounded look, skipped while the bucket fails: ``objects.py``).
  An object there is brought in by the same fill machinery and its digest verified; one the
  server vouches for (``StoredObject.verified``) is streamed to followers as it arrives, any other
  is hashed whole before a reader gets a byte. An object that does not hash to its digest is
  deleted from the bucket and counted (``blob``/``bucket_dropped``), and the fill goes on from
  upstream; so does a fill whose bucket read fails before a reader got a byte: never a 5xx for
  the bucket. Who may see the blob is never taken from the bucket: upstream confirms it as for
  any blob not known here;
- with ``redirect: true``, a GET of a blob whose bucket object is verified is a 307 to a
  presigned URL, only once the client is authorized (a HEAD is answered here).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import AsyncIterator

from proxy.config import CacheConfig, LimitsConfig
from proxy.errors import BlobUnknown, DigestInvalid, OCIError, SizeInvalid, Unavailable
from proxy.metrics import Metrics
from proxy.oci.digest import Digest
from proxy.registry.base import BlobResult, Client, Target
from proxy.registry.decisions import CacheDecisions
from proxy.registry.fills import Fill, FillGroup
from proxy.registry.peer_flight import PeerFlight
from proxy.registry.tasks import BackgroundTasks
from proxy.registry.upstream_access import UpstreamAccess
from proxy.storage.blobs import BlobStore, BlobWriter, held_by_a_process
from proxy.storage.hashing import ThreadedHasher
from proxy.storage.meta import MetaStore
from proxy.storage.objects import ObjectStore, StoredObject
from proxy.upstream.auth import Credential
from proxy.upstream.client import Upstream
from proxy.upstream.peer import PeerBlobs, PeerGone

log = logging.getLogger("wharf.fill")


class _NothingServed(Exception):
    """The bucket's copy could not be used, and no reader got a byte of it."""


class _Landing:
    """The file a fill writes, kept across its sources: when a replica's stream breaks, the next
    source (another replica, or upstream) is read from its first byte and must repeat what the
    file holds, byte for byte, before the file grows again. The digest then covers exactly what
    readers got; a source that differs fails the fill."""

    def __init__(self, temp_path: Path, size_path: Path) -> None:
        self.temp_path, self.size_path = temp_path, size_path
        self.writer: BlobWriter | None = None
        self.hasher: ThreadedHasher | None = None
        self.size: int | None = None

    async def resumed(self, source) -> AsyncIterator[bytes]:
        """``source``'s chunks past what the file already holds (compared with it first)."""
        assert self.writer is not None
        self.writer.flush_held()
        held = self.writer.written
        if not held:
            async for chunk in source:
                yield chunk
            return
        fd = os.open(self.temp_path, os.O_RDONLY)
        try:
            checked = 0
            async for chunk in source:
                if checked < held:
                    count = min(held - checked, len(chunk))
                    if os.pread(fd, count, checked) != bytes(chunk[:count]):
                        raise DigestInvalid(f"the next source's bytes differ at {checked}-{checked + count} "
                                            "from those already sent")
                    checked += count
                    chunk = chunk[count:]
                    if not chunk:
                        continue
                yield chunk
            if checked < held:
                raise SizeInvalid(f"the next source ended at {checked} bytes, before the {held} already sent")
        finally:
            os.close(fd)

    def abort(self) -> None:
        if self.writer is not None and not self.writer.closed:
            self.writer.abort()


class BlobCache:
    """Upstream blobs in the store, and the fills that bring them there."""

    def __init__(self, blobs: BlobStore, meta: MetaStore, metrics: Metrics, cache: CacheConfig,
                 limits: LimitsConfig, tasks: BackgroundTasks, access: UpstreamAccess,
                 decisions: CacheDecisions) -> None:
        self._blobs = blobs
        self._meta = meta
        self._metrics = metrics
        self._cache = cache
        self._limits = limits
        self._access = access
        self._decisions = decisions
        self.fills = FillGroup(tasks, blobs)
        self.objects: ObjectStore | None = None  # the bucket under the store (app.py attaches it)
        # replicas on disks of their own: who fills what (peer_flight.py), and streams from them
        self.peers: PeerFlight | None = None
        self.peers_client: PeerBlobs | None = None

    async def blob(self, upstream: Upstream, target: Target, digest: Digest, client: Client,
                   head: bool) -> BlobResult:
        size = self._blobs.size(digest)
        if size is not None:
            await self._access.authorize(upstream, target, digest, client, blob=True)
            self._decisions.count("blob", "hit")
            if not head and self.objects is not None and self.objects.redirect:
                redirected = await self._redirect(digest, size)
                if redirected is not None:
                    return redirected
            return self._stored(digest, size)
        credential, public = self._access.effective(upstream, client)
        if self.fills.get(digest) is None and await self._access.known_missing(upstream, target, str(digest), client):
            self._decisions.count("blob", "negative")
            raise BlobUnknown(f"blob {digest} unknown upstream (cached answer)")
        if self.objects is not None and self.fills.get(digest) is None:
            stored = await self._in_bucket(digest)
            if stored is not None and (stored.verified or not head):
                return await self._from_bucket(upstream, target, digest, client, head, stored)
        # no await between looking for a running fill and starting one: that is the single flight
        fill = self.fills.get(digest)
        if fill is not None:
            await asyncio.shield(fill.started)
            await self._access.authorize(upstream, target, digest, client, blob=True)
            self._decisions.count("blob", "coalesced")
            status = "coalesced"
        else:
            if head:
                return await self._head_upstream(upstream, target, digest, client)
            fill = self.fills.start(
                digest, lambda f, temp, size_file: self._run_fill(f, temp, size_file, upstream, target,
                                                                  credential, public),
                self._cache.fill_timeout, about={"upstream": upstream.name, "repository": target.repo,
                                                 "public": public})
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

    def _stored(self, digest: Digest, size: int) -> BlobResult:
        """A blob of the store, sent as a file and marked as read while it goes out."""
        return BlobResult(digest, size, path=self._blobs.path(digest),
                          reading=lambda: self._blobs.reading(digest), cache_status="hit")

    async def _in_bucket(self, digest: Digest) -> StoredObject | None:
        try:
            return await self.objects.head(digest)
        except Unavailable:
            return None  # the bucket is down: upstream is asked as if it had no copy

    async def _redirect(self, digest: Digest, size: int) -> BlobResult | None:
        """A 307 to the bucket for a blob it holds verified; None (serve it here) when it does not,
        holds something else, or is down."""
        stored = await self._in_bucket(digest)
        if stored is None or not stored.verified or stored.size != size:
            return None
        return BlobResult(digest, size, redirect=await self.objects.presign(digest), cache_status="hit")

    async def _from_bucket(self, upstream: Upstream, target: Target, digest: Digest, client: Client,
                           head: bool, stored: StoredObject) -> BlobResult:
        """Serve a blob the bucket holds, once upstream confirms the client may see it (unless this
        store knows it already); a GET fills the local store from the bucket, or from upstream when
        the bucket's object turns out not to be the blob."""
        await self._access.authorize(upstream, target, digest, client, blob=True)
        self._decisions.count("blob", "hit")
        if head:
            return BlobResult(digest, stored.size, cache_status="hit")
        if self.objects.redirect and stored.verified:
            return BlobResult(digest, stored.size, redirect=await self.objects.presign(digest), cache_status="hit")
        credential, public = self._access.effective(upstream, client)
        fill = self.fills.get(digest)  # no await between looking and starting: the single flight
        if fill is None:
            fill = self.fills.start(
                digest, lambda f, temp, size_file: self._run_bucket_fill(f, temp, size_file, stored, upstream,
                                                                         target, credential, public),
                self._cache.fill_timeout, about={"upstream": upstream.name, "repository": target.repo,
                                                 "public": public, "source": "object storage"})
        await asyncio.shield(fill.started)
        size = self._blobs.size(digest) if fill.size is None else None
        if size is not None:  # an object no HEAD vouched for begins only once stored and verified
            return self._stored(digest, size)
        return BlobResult(digest, fill.size, segments=fill.segments, cache_status="hit")

    async def _run_bucket_fill(self, fill: Fill, temp_path: Path, size_path: Path, stored: StoredObject,
                               upstream: Upstream, target: Target, credential: Credential | None,
                               public: bool) -> None:
        """Copy one blob from the bucket into the store, verified as an upstream fill is; from
        upstream instead when the bucket's copy is bad or unreadable before a reader got a byte."""
        try:
            path = await self._copy_from_bucket(fill, temp_path, size_path, stored)
        except _NothingServed:
            await self._run_fill(fill, temp_path, size_path, upstream, target, credential, public)
            return
        fill.finish(path)

    async def _copy_from_bucket(self, fill: Fill, temp_path: Path, size_path: Path, stored: StoredObject) -> Path:
        """The bucket's object, verified into the store. Readers begin at the first byte only when
        the server vouches for the object; else once it verified (they then read the stored blob).
        A bad object is dropped from the bucket; _NothingServed when no reader got a byte."""
        size = stored.size
        writer = self._blobs.new_writer(fill.digest.algorithm, temp_path=temp_path, hash_inline=False,
                                        max_size=size, expected_size=size)
        began = False
        try:
            hasher = ThreadedHasher(fill.digest.algorithm)
            async for chunk in self.objects.stream(fill.digest):
                if stored.verified and not began:
                    size_path.write_text(str(size))
                    fill.begin(writer, size)
                    began = True
                writer.write(chunk)
                await hasher.update(chunk)
            return await writer.commit_off_loop(fill.digest, size, actual=await hasher.digest())
        except (DigestInvalid, SizeInvalid) as bad:
            await self.objects.drop(fill.digest, str(bad))
            self._decisions.count("blob", "bucket_dropped")
            if began:
                raise
            raise _NothingServed() from None
        except Unavailable:
            if began:
                raise
            raise _NothingServed() from None
        finally:
            if not writer.closed:
                writer.abort()

    async def _head_upstream(self, upstream: Upstream, target: Target, digest: Digest,
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
        """Download one blob into the store; readers here and in other workers follow it. With
        replicas on disks of their own (``peers``), only the replica that claims the blob asks
        upstream; the others stream it from that replica (``peer_flight.py``). A source that
        breaks is followed by the next in the same file (``_Landing``)."""
        landing = _Landing(temp_path, size_path)
        try:
            if self.peers is None:
                await self._download(fill, landing, upstream, target, credential, public)
            else:
                await self._fill_in_cluster(fill, landing, upstream, target, credential, public)
        except BaseException:
            landing.abort()
            if self._blobs.size(fill.digest) is None:
                # who may see it was granted for the followers; bytes that never arrived grant nothing
                self._meta.forget(str(fill.digest))
            raise

    async def _fill_in_cluster(self, fill: Fill, landing: _Landing, upstream: Upstream, target: Target,
                               credential: Credential | None, public: bool) -> None:
        failing: tuple[str, float] | None = None  # (the claim that failed us, since when)
        while True:
            claim = await self.peers.claim(fill.digest)
            if claim.ours:
                await self.peers.lead(claim, lambda: self._download(fill, landing, upstream, target,
                                                                    credential, public))
                return
            try:
                await self._copy_from_peer(fill, landing, claim.holder, upstream, target, credential, public)
                return
            except (DigestInvalid, SizeInvalid):
                await self.peers.drop(claim)  # a replica whose copy is not the blob is not pointed at again
                raise
            except PeerGone as gone:
                token = str(claim.value.get("token"))
                if failing is None or failing[0] != token:
                    failing = (token, time.monotonic())
                if gone.refused or time.monotonic() - failing[1] > 2 * self.peers.lease_seconds:
                    # a replica that refuses our signature (another secret), or one that keeps
                    # failing while its claim lives: this replica downloads for itself
                    log.warning("replica %s cannot give %s (%s); downloading it here", claim.holder, fill.digest,
                                gone, extra={"digest": str(fill.digest), "peer": claim.holder})
                    await self._download(fill, landing, upstream, target, credential, public)
                    return
                log.info("replica %s could not give %s (%s); asking again", claim.holder, fill.digest, gone,
                         extra={"digest": str(fill.digest), "peer": claim.holder})
                await self.peers.passed(claim)

    async def _download(self, fill: Fill, landing: _Landing, upstream: Upstream, target: Target,
                        credential: Credential | None, public: bool) -> None:
        async with upstream.open_blob(target.repo, fill.digest, credential) as source:
            self._meta.grant(str(fill.digest), target.scope, public)  # upstream let this credential GET it
            await self._receive(fill, landing, source, f"from {upstream.name}")

    async def _copy_from_peer(self, fill: Fill, landing: _Landing, peer_url: str, upstream: Upstream,
                              target: Target, credential: Credential | None, public: bool) -> None:
        """Stream one blob from the replica filling (or holding) it into the store, verified as an
        upstream download is. Who may see it is never taken from the peer for a client's own
        credential: upstream confirms it (a HEAD) unless both fetches were made without one."""
        async with self.peers_client.open(peer_url, fill.digest) as source:
            if not (public and source.public):
                await upstream.head_blob(target.repo, fill.digest, credential)  # BlobUnknown: 404 here too
            self._meta.grant(str(fill.digest), target.scope, public)
            await self._receive(fill, landing, source, f"from replica {peer_url}")

    async def _receive(self, fill: Fill, landing: _Landing, source, origin: str) -> None:
        """Write ``source`` (a sized stream of chunks) into the store as ``fill``'s blob, verified;
        readers follow from its first byte. A replica's stream that breaks is PeerGone and leaves
        the file as it is for the next source; any other failure is the fill's."""
        size = source.size
        if size is not None and size > self._limits.max_layer_bytes:
            raise SizeInvalid(f"blob of {size} bytes exceeds the {self._limits.max_layer_bytes} byte limit")
        if landing.writer is None:
            landing.writer = self._blobs.new_writer(
                fill.digest.algorithm, temp_path=landing.temp_path, hash_inline=False,
                max_size=size if size is not None else self._limits.max_layer_bytes, expected_size=size)
            landing.hasher, landing.size = ThreadedHasher(fill.digest.algorithm), size
            landing.size_path.write_text(str(size if size is not None else -1))
            fill.begin(landing.writer, size)
        elif size != landing.size:
            raise SizeInvalid(f"the next source of {fill.digest} announced {size} bytes, the first {landing.size}")
        writer, hasher = landing.writer, landing.hasher
        self._metrics.fills_in_flight.inc()
        try:
            async for chunk in landing.resumed(source):
                writer.write(chunk)
                await hasher.update(chunk)
            path = await writer.commit_off_loop(fill.digest, size, actual=await hasher.digest())
        except (OCIError, PeerGone):
            raise
        except Exception as exc:
            raise Unavailable(f"download of {fill.digest} {origin} broke: {type(exc).__name__}") from None
        finally:
            self._metrics.fills_in_flight.dec()
        fill.finish(path)

    def media_type_of(self, digest: Digest) -> str:
        """A stored manifest's media type; any other blob's is application/octet-stream."""
        return self._meta.manifest_type(str(digest)) or "application/octet-stream"

    async def for_peer(self, digest: Digest) -> tuple[BlobResult, bool]:
        """(the blob, whether it is public) for another replica: stored here, or followed as this
        store fills it. BlobUnknown otherwise: a replica serves what it holds or fills, never
        fetches for another (the caller is one, checked by the handler)."""
        public = self._meta.visibility(str(digest)).public
        size = self._blobs.size(digest)
        if size is not None:
            return self._stored(digest, size), public
        fill = self.fills.get(digest)
        if fill is None:
            _, _, lock_path = self._blobs.fill_paths(digest)
            if not held_by_a_process(lock_path):
                raise BlobUnknown(f"blob {digest} is neither stored nor filling on this replica")

            fill = self.fills.watch(digest, self._cache.fill_timeout)  # another worker of ours leads it
        await asyncio.shield(fill.started)
        size = self._blobs.size(digest) if fill.size is None else None
        if size is not None:
            return self._stored(digest, size), public
        return BlobResult(digest, fill.size, segments=fill.segments), self._meta.visibility(str(digest)).public
