"""Offline upstreams: answered from the store alone, never contacted.

An upstream is offline when ``offline: true`` is set at the top level or on the upstream
(``Config.is_offline``): an air-gapped site. The pull-through registry routes its targets here
before anything else, and nothing here holds an ``Upstream`` (the client refuses to send for an
offline upstream too: ``UpstreamOffline``). Rules:
- a tag answers its stored record (read from disk: an import by another process may just have
  written it), whatever its age: no TTL, no revalidation; a digest answers a stored manifest;
- a manifest the store lost part of (``has_lost_content``: a blob it held was evicted, or every
  platform it held of an index) answers MANIFEST_UNKNOWN saying so, as missing content does here
  (the verdict is remembered until the store's content changes: ``LostContent``); an answer is
  shared (replayed) only while the store's content stays as it was when it was given
  (``BlobStore.stamp``): an eviction, gc or import by any process of the store ends it;
- only public content is served: content learned with a client's own upstream credential
  cannot be confirmed while offline, and answers as missing, saying so;
- a child manifest of a mirrored index that was left out (a platform subset) answers
  MANIFEST_UNKNOWN saying it was not mirrored and why (``MetaStore.unmirrored``);
- blobs: complete stored blobs, sent from the file (sendfile, Range);
- tag lists: the tags mirroring made visible merged with the stored copy of upstream's list,
  paged with ``n``/``last``; referrers: those mirroring recorded, ``artifactType`` applied;
- anything else is MANIFEST_UNKNOWN / BLOB_UNKNOWN / NAME_UNKNOWN naming offline mode.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from proxy.errors import BlobUnknown, ManifestUnknown, NameUnknown, OCIError
from proxy.oci.digest import Digest, is_digest
from proxy.oci.media import OCI_INDEX, accepts
from proxy.oci.names import validate_tag
from proxy.registry.base import BlobResult, Client, ManifestResult, ReferrersResult, TagsPage, Target
from proxy.registry.decisions import CacheDecisions
from proxy.registry.listings import MAX_PAGE, page_tags
from proxy.storage.blobs import BlobStore
from proxy.storage.lost_content import LostContent
from proxy.storage.meta import MetaStore, Visibility

# How long a tag's answer may be replayed to every client. Nothing here expires a tag; what moves
# one is an import or a sync (``MirrorRecords.adopt``), which calls ``Invalidation.tag_changed``:
# that drops the replayed answers in this process at once and in every other within
# ``invalidation.POLL_SECONDS``. The bound only limits how long a change that skipped the hook
# could mislead.
TAG_SHARED_SECONDS = 600.0
_OFF_LOOP_BYTES = 65536  # tag lists larger than this are merged and paged in a thread


class OfflineRegistry:
    """Pull routes for the targets of offline upstreams, from what the store holds."""

    def __init__(self, blobs: BlobStore, meta: MetaStore, decisions: CacheDecisions,
                 upstreams: frozenset[str], lost: LostContent) -> None:
        self._blobs = blobs
        self._meta = meta
        self._lost = lost
        self._decisions = decisions
        self.upstreams = upstreams  # the names of the offline upstreams

    # pull ------------------------------------------------------------------------------------
    async def manifest(self, target: Target, reference: str, accept: list[str], client: Client,
                       head: bool) -> ManifestResult:
        """A stored public manifest, by digest (shared for good) or by its stored tag record; shared
        only while the store's content stays as it was before the first look (``BlobStore.stamp``)."""
        stamp = self._blobs.stamp()
        if is_digest(reference):
            digest = Digest.parse(reference)
            where, until = f"{target.scope}@{digest}", math.inf
        else:
            where = f"{target.scope}:{validate_tag(reference)}"
            record = self._meta.tag(target.scope, reference, fresh=True)
            if record is None:
                raise self._missing(ManifestUnknown, target, where)
            if not record.public:
                raise self._private(ManifestUnknown, target, where)
            digest, until = Digest.parse(record.digest), time.time() + TAG_SHARED_SECONDS
        media_type = self._meta.manifest_type(str(digest))
        size = self._blobs.size(digest) if media_type else None
        if media_type is None or size is None:
            note = self._meta.unmirrored(str(digest))
            if note:
                self._decisions.count("manifest", "offline_missing")
                raise ManifestUnknown(f"{where} was not mirrored: {note} ({_rule(target)})")
            raise self._missing(ManifestUnknown, target, where)
        visibility = self._meta.visibility(str(digest), fresh=True)
        if not visibility.public:
            raise self._unconfirmed(ManifestUnknown, target, where, visibility)
        if not accepts(accept, media_type):
            self._decisions.count("manifest", "offline_missing")
            raise ManifestUnknown(f"{where} is {media_type}, which the client does not accept; no other "
                                  f"form can be asked for ({_rule(target)})")
        if await self._lost.lost(str(digest), media_type):
            self._decisions.count("manifest", "offline_missing")
            raise ManifestUnknown(f"{where} is not whole in this offline mirror: blobs it names were "
                                  f"evicted ({_rule(target)})")
        body = None if head else self._blobs.read_bytes(digest)
        if body is None and not head:
            raise self._missing(ManifestUnknown, target, where)  # evicted between the look and the read
        self._decisions.count("manifest" if is_digest(reference) else "tag", "offline")
        if stamp is None:  # the store is changing: no answer is shared until it settles
            return ManifestResult(digest, media_type, size, body, "offline")
        return ManifestResult(digest, media_type, size, body, "offline", until,
                              holds=lambda: self._blobs.stamp() == stamp)

    async def blob(self, target: Target, digest: Digest, client: Client, head: bool) -> BlobResult:
        """A complete stored public blob, sent from its file."""
        where = f"{target.scope}@{digest}"
        size = self._blobs.size(digest)
        if size is None:
            raise self._missing(BlobUnknown, target, where, "blob")
        visibility = self._meta.visibility(str(digest), fresh=True)
        if not visibility.public:
            raise self._unconfirmed(BlobUnknown, target, where, visibility, "blob")
        self._decisions.count("blob", "offline")
        return BlobResult(digest, size, path=self._blobs.path(digest),
                          reading=lambda: self._blobs.reading(digest), cache_status="offline")

    async def tags(self, target: Target, n: int | None, last: str | None, client: Client) -> TagsPage:
        """The tags mirroring made visible, with those of the stored copy of upstream's public list."""
        # written by ``MirrorRecords`` (proxy.mirror.records) and ``UpstreamLists.tags`` (listings.py)
        mirrored = self._meta.document(f"mirror-tags:{target.scope}", fresh=True) or []
        saved = self._meta.document(f"tags:{target.scope}", fresh=True)
        stored = saved.get("body") if saved and saved.get("public") else None
        size = len(mirrored) * 16 + (len(stored) if isinstance(stored, str) else 0)
        args = (target.repo, mirrored, stored, MAX_PAGE if n is None else n, last)
        # parsing, merging and paging grow with the lists (upstream's may be 16 MB): off the loop when big
        page = await asyncio.to_thread(_tag_page, *args) if size > _OFF_LOOP_BYTES else _tag_page(*args)
        if page is None:
            self._decisions.count("tags", "offline_missing")
            raise NameUnknown(f"repository {target.scope} is not in this offline mirror ({_rule(target)})")
        self._decisions.count("tags", "offline")
        return TagsPage(*page, "offline")

    async def referrers(self, target: Target, digest: Digest, artifact_type: str | None,
                        client: Client) -> ReferrersResult:
        """The referrers mirroring recorded for ``digest`` that are stored and public, as an OCI index."""
        found = []
        for descriptor in self._meta.document(f"referrers:{target.scope}:{digest}", fresh=True) or []:
            if artifact_type and descriptor.get("artifactType") != artifact_type:
                continue
            try:
                referrer = Digest.parse(descriptor["digest"])
            except (KeyError, TypeError, OCIError):
                continue
            if self._blobs.size(referrer) is not None and self._meta.visibility(str(referrer), fresh=True).public:
                found.append(descriptor)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}).encode()
        self._decisions.count("referrers", "offline")
        return ReferrersResult(body, OCI_INDEX, "artifactType" if artifact_type else None,
                               cache_status="offline")

    # refusals --------------------------------------------------------------------------------
    def _missing(self, error: type[OCIError], target: Target, where: str, kind: str = "manifest") -> OCIError:
        self._decisions.count(kind, "offline_missing")
        return error(f"{where} is not in this offline mirror ({_rule(target)})")

    def _unconfirmed(self, error: type[OCIError], target: Target, where: str, visibility: Visibility,
                     kind: str = "manifest") -> OCIError:
        """Stored but not public: learned upstream with a client's credential (said so), or pushed
        content of local repositories only (missing under an upstream's name)."""
        if any(not scope.startswith("/") for scope in visibility.repos):
            return self._private(error, target, where, kind)
        return self._missing(error, target, where, kind)

    def _private(self, error: type[OCIError], target: Target, where: str, kind: str = "manifest") -> OCIError:
        self._decisions.count(kind, "offline_missing")
        return error(f"{where} is not in this offline mirror: what is stored of it was fetched with a "
                     f"client's own upstream credential, which cannot be confirmed while offline "
                     f"({_rule(target)})")


def _tag_page(repo: str, mirrored: list, stored: object, n: int, last: str | None) -> tuple[bytes, str | None] | None:
    """The page of the tags mirroring made visible merged with the stored public list; None: none."""
    names = {t for t in mirrored if isinstance(t, str)}
    if isinstance(stored, str):
        try:
            listed = json.loads(stored).get("tags") or []
        except (ValueError, AttributeError, TypeError):
            listed = []
        if isinstance(listed, list):
            names.update(t for t in listed if isinstance(t, str))
    if not names:
        return None
    return page_tags(json.dumps({"name": repo, "tags": sorted(names)}).encode(), n, last)


def _rule(target: Target) -> str:
    return f"offline: true: Wharf does not contact {target.upstream}"
