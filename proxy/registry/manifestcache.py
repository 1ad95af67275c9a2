"""Upstream manifests: fetched once, verified, and stored exactly as upstream sent them.

Rules:
- digests are immutable: a manifest stored by digest is served without asking upstream, once the
  client is allowed to see it (``UpstreamAccess.authorize``);
- concurrent requests for the same manifest with the same credential share one upstream GET, in
  this process and across the workers and replicas sharing its coordination (``ClusterFlight``);
- upstream manifests must parse as manifests of their media type before they are stored or
  served; anything else (an error page, a token document from a redirect) is ``UpstreamInvalid``.
  Big ones are hashed and parsed in a worker thread, as pushed ones are;
- a manifest is stored under the digest asked for, else under upstream's Docker-Content-Digest,
  else under its own hash; the body must hash to it;
- a 404 is remembered per credential (the negative cache of ``UpstreamAccess``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Awaitable, Callable

from proxy.errors import ManifestInvalid, ManifestUnknown, OCIError, UpstreamInvalid
from proxy.oci.digest import Digest, is_digest
from proxy.oci.media import (DOCKER_MANIFEST, MANIFEST_TYPES, MAX_MANIFEST_BYTES, OCI_MANIFEST, OFF_LOOP_BYTES, accepts,
                             parse_manifest)
from proxy.registry.base import Client, Target
from proxy.registry.cluster_flight import ClusterFlight
from proxy.registry.decisions import CacheDecisions
from proxy.registry.upstream_access import UpstreamAccess
from proxy.storage.blobs import BlobStore
from proxy.storage.meta import MetaStore, TagRecord
from proxy.upstream.answers import UpstreamManifest
from proxy.upstream.client import Upstream
from proxy.upstream.peer import PeerBlobs, PeerGone

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


class ManifestCache:
    """Upstream manifests in the store: by digest, fetched for a tag, or for a client's Accept."""

    def __init__(self, blobs: BlobStore, meta: MetaStore, access: UpstreamAccess,
                 decisions: CacheDecisions, cluster: ClusterFlight) -> None:
        self._blobs = blobs
        self._meta = meta
        self._access = access
        self._decisions = decisions
        self._cluster = cluster
        self.peers: PeerBlobs | None = None  # replicas on disks of their own copy manifests from each other

    async def by_digest(self, upstream: Upstream, target: Target, digest: Digest,
                        client: Client) -> tuple[TagRecord, str]:
        """A stored manifest for a client allowed to see it, else fetched from upstream."""
        media_type = self._meta.manifest_type(str(digest))
        size = self._blobs.size(digest) if media_type else None
        if media_type and size is not None:
            await self._access.authorize(upstream, target, digest, client)
            self._decisions.count("manifest", "hit")
            return TagRecord(str(digest), media_type, size, 0.0), "hit"
        record, joined = await self.fetch(upstream, target, str(digest), client)
        if joined:
            await self._access.authorize(upstream, target, digest, client)
            return record, "coalesced"
        self._decisions.count("manifest", "miss")
        return record, "miss"

    async def fetch(self, upstream: Upstream, target: Target, reference: str, client: Client,
                    coalesce: bool = True, learned: Callable[[TagRecord], Awaitable[None]] | None = None
                    ) -> tuple[TagRecord, bool]:
        """GET a manifest (by tag or digest) once for all concurrent askers with this credential.

        ``learned(record)`` runs once per upstream GET, after the manifest is stored (the tag
        policy records a tag's resolution there).
        """
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
            record = await self._store(answer, target, reference, public)
            if learned is not None:
                await learned(record)
            await self._access.remember_authorized(upstream, target, client)
            return record

        async def adopt(digest: str, checked_at: float, leader_url: str | None) -> TagRecord | None:
            """Another process's answer (upstream's at ``checked_at``), when the store it wrote to is
            ours too, or copied from the replica that stored it (``leader_url``)."""
            if is_digest(reference) and digest != reference:
                return None
            media_type = self._meta.manifest_type(digest)
            size = self._blobs.size(Digest.parse(digest)) if media_type else None
            if (media_type is None or size is None) and leader_url is not None and self.peers is not None:
                copied = await self._copy_from_peer(leader_url, Digest.parse(digest))
                if copied is not None:
                    media_type, size = copied
            if media_type is None or size is None:
                return None
            self._meta.grant(digest, target.scope, public)
            record = TagRecord(digest, media_type, size, checked_at, public)
            if learned is not None:
                await learned(record)
            return record

        if not coalesce:
            return await fetch(), False
        cred_id = self._access.cred_id(upstream, client)
        # a token request and the GET, each connect + first byte, then the body
        config = upstream.config
        lock_ttl = 2 * (config.connect_timeout + config.first_byte_timeout) + config.read_timeout

        async def across_processes() -> tuple[TagRecord, bool]:
            return await self._cluster.run(f"{target.scope}:{reference}:{cred_id}", lock_ttl, fetch, adopt)

        (record, joined_elsewhere), joined = await self._decisions.coalesced(
            "manifest", ("manifest", target.scope, reference, cred_id), across_processes)
        if joined_elsewhere and not joined:
            self._decisions.count("manifest", "coalesced")
        return record, joined or joined_elsewhere

    async def for_accept(self, upstream: Upstream, target: Target, tag: str, accept: list[str],
                         client: Client) -> tuple[TagRecord, str]:
        """A client that accepts none of the cached tag's type gets upstream's answer for its Accept."""
        credential, public = self._access.effective(upstream, client)
        answer = await upstream.get_manifest(target.repo, tag, credential, accept=", ".join(accept))
        record = await self._store(answer, target, tag, public)
        if not accepts(accept, record.media_type):
            raise ManifestUnknown(f"no manifest of an accepted media type for tag {tag}")
        self._decisions.count("manifest", "miss")
        return record, "miss"

    async def _copy_from_peer(self, peer_url: str, digest: Digest) -> tuple[str, int] | None:
        """(media type, size) of the manifest ``digest`` copied from the replica that stored it,
        verified as an upstream answer is; None when that replica cannot give it."""
        assert self.peers is not None
        try:
            body, content_type = await self.peers.manifest(peer_url, digest, MAX_MANIFEST_BYTES)
        except PeerGone:
            return None
        try:
            if len(body) > OFF_LOOP_BYTES:
                media_type = await asyncio.to_thread(_verified_media_type, body, digest, content_type)
            else:
                media_type = _verified_media_type(body, digest, content_type)
        except OCIError:
            return None  # not the manifest: upstream is asked
        if self._blobs.size(digest) is None:
            self._blobs.put_bytes(body, digest)
        self._meta.set_manifest_type(str(digest), media_type)
        return media_type, len(body)

    async def _store(self, answer: UpstreamManifest, target: Target, reference: str, public: bool) -> TagRecord:
        """Verify and store a manifest body exactly as upstream sent it."""
        if is_digest(reference):
            expected = Digest.parse(reference)
        else:
            expected = answer.declared_digest() or Digest.of(answer.body)
        body = answer.body
        if len(body) > OFF_LOOP_BYTES:  # hashing and parsing grow with the body: not on the loop
            media_type = await asyncio.to_thread(_verified_media_type, body, expected, answer.media_type)
        else:
            media_type = _verified_media_type(body, expected, answer.media_type)
        if self._blobs.size(expected) is None:
            self._blobs.put_bytes(body, expected)
        self._meta.set_manifest_type(str(expected), media_type)
        self._meta.grant(str(expected), target.scope, public)
        return TagRecord(str(expected), media_type, len(body), time.time(), public)
