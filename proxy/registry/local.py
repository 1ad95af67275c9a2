"""The embedded registry: repositories whose content was pushed to Wharf.

A blob or manifest is visible in a local repository only when that repository links it
(``MetaStore.grant`` with the repository's scope). Links are made by a finished upload, a mount
and a manifest push, and removed by the DELETE endpoints; ``wharf gc`` removes content no
repository's manifests reference any more. Everything pushed is marked pushed before it enters
the blob store, so the cache budget never evicts it.

Rules of the push path:
- a manifest is accepted only when every blob and child manifest it names is readable in the
  same repository, except non-distributable (foreign) layers, which are taken as they are, and
  the ``subject``, which may name anything (the referrers API answers for unknown subjects too);
- readable in a repository means linked there, or public content of the store (cached from an
  upstream without a client's credential, readable by anyone): an image built on a cached base
  pushes without uploading the base's layers again (clients HEAD them and skip the upload), and
  the manifest push links them into the repository, where they are never evicted;
- a manifest pushed by digest must hash to that digest (with that digest's algorithm); one pushed
  by tag is named by its sha256;
- a mount links a blob that is readable in the source: linked there when the source is local,
  cached as public content when it is an upstream repository; an anonymous mount (no ``from``)
  takes any blob linked in some local repository.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

from proxy.errors import (BlobUnknown, DigestInvalid, ManifestBlobUnknown, ManifestInvalid, ManifestTooLarge,
                          ManifestUnknown, NameUnknown, OCIError)
from proxy.oci.digest import Digest, is_digest
from proxy.oci.media import (DOCKER_MANIFEST, MANIFEST_TYPES, MAX_DESCRIPTORS, MAX_MANIFEST_BYTES, OCI_INDEX,
                             OCI_MANIFEST, accepts, parse_manifest, parse_manifest_off_loop)
from proxy.oci.names import validate_tag
from proxy.registry.base import (BlobResult, CatalogPage, Chunk, Client, ManifestResult, PushedManifest,
                                 ReferrersResult, TagsPage, Target, UploadState)
from proxy.registry.invalidation import Invalidation
from proxy.storage.blobs import BlobStore
from proxy.storage.meta import MetaStore, TagRecord
from proxy.storage.uploads import UploadStore


_INLINE_DESCRIPTORS = 64  # manifests naming more are checked and linked in a worker thread


class RecentManifests:
    """Manifests of local repositories answered lately, by (scope, tag or digest), kept in memory so
    a hit skips SQLite and the disk. Entries go when the invalidation hook says the tag or digest
    changed in that repository, or that everything did; before each hit the store's stamp is
    looked at, so another worker's push counts at once; bounded by total bytes, oldest first."""

    def __init__(self, enabled: bool, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.enabled = enabled
        self._entries: dict[tuple[str, str], ManifestResult] = {}
        self._bytes = 0
        self._max_bytes = max_bytes

    def get(self, scope: str, reference: str) -> ManifestResult | None:
        return self._entries.get((scope, reference))

    def add(self, scope: str, reference: str, result: ManifestResult) -> None:
        if not self.enabled or result.body is None or len(result.body) > self._max_bytes // 64:
            return
        self.drop(scope, reference)
        self._entries[(scope, reference)] = result
        self._bytes += result.size
        while self._bytes > self._max_bytes:
            key = next(iter(self._entries))
            self._bytes -= self._entries.pop(key).size

    def drop(self, scope: str, reference: str) -> None:
        entry = self._entries.pop((scope, reference), None)
        if entry is not None:
            self._bytes -= entry.size

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


class LocalRegistry:
    def __init__(self, blobs: BlobStore, meta: MetaStore, uploads: UploadStore,
                 invalidation: Invalidation, max_descriptors: int = MAX_DESCRIPTORS,
                 recent_manifests: bool = True) -> None:
        self._blobs = blobs
        self._meta = meta
        self._uploads = uploads
        self._invalidation = invalidation
        self._max_descriptors = max_descriptors
        self._recent = RecentManifests(recent_manifests)
        invalidation.subscribe(self._recent.drop, self._recent.clear)
        # big manifests are parsed and checked here, one at a time (see parse_manifest_off_loop)
        self._manifest_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifests")

    def _linked(self, target: Target, digest: Digest) -> bool:
        return target.scope in self._meta.visibility(str(digest), fresh=True).repos

    def _readable(self, target: Target, digest: Digest) -> bool:
        """Linked in the repository, or public content of the store (anyone may read it)."""
        visibility = self._meta.visibility(str(digest), fresh=True)
        return visibility.public or target.scope in visibility.repos

    async def manifest(self, target: Target, reference: str, accept: list[str], client: Client,
                       head: bool) -> ManifestResult:
        recent = self._recent.get(target.scope, reference)
        if recent is not None and self._invalidation.poll():  # another worker changed something: look again
            recent = None
        if recent is not None and accepts(accept, recent.media_type):
            return ManifestResult(recent.digest, recent.media_type, recent.size, recent.body, "local")
        if is_digest(reference):
            digest = Digest.parse(reference)
            media_type = self._meta.manifest_type(str(digest))
        else:
            record = self._meta.tag(target.scope, validate_tag(reference))
            if record is None:
                raise ManifestUnknown(f"tag {reference} unknown in {target.repo}")
            digest, media_type = Digest.parse(record.digest), record.media_type
        size = self._blobs.size(digest)
        if media_type is None or size is None or not self._linked(target, digest):
            raise ManifestUnknown(f"manifest {reference} unknown in {target.repo}")
        if not accepts(accept, media_type):
            raise ManifestUnknown(f"manifest {reference} is {media_type}, which the client does not accept")
        body = self._blobs.read_bytes(digest)
        if body is None:
            raise ManifestUnknown(f"manifest {reference} unknown in {target.repo}")
        self._recent.add(target.scope, reference, ManifestResult(digest, media_type, size, body, "local"))
        return ManifestResult(digest, media_type, size, None if head else body, "local")

    async def blob(self, target: Target, digest: Digest, client: Client, head: bool) -> BlobResult:
        size = self._blobs.size(digest)
        if size is None or not self._readable(target, digest):
            raise BlobUnknown(f"blob {digest} unknown in {target.repo}")
        return BlobResult(digest, size, path=self._blobs.path(digest),
                          reading=lambda: self._blobs.reading(digest), cache_status="local")

    async def tags(self, target: Target, n: int | None, last: str | None, client: Client) -> TagsPage:
        record = self._meta.repo(target.repo)
        if record is None:
            raise NameUnknown(f"repository {target.repo} is not known")
        names, link = _page(record.get("tags", []), n, last)
        body = json.dumps({"name": target.repo, "tags": names}).encode()
        return TagsPage(body, link, "local")

    async def catalog(self, n: int | None, last: str | None, client: Client) -> CatalogPage:
        names, link = _page(self._meta.catalog(), n, last)
        return CatalogPage(names, link)

    async def referrers(self, target: Target, digest: Digest, artifact_type: str | None,
                        client: Client) -> ReferrersResult:
        found = self._meta.document(f"referrers:{target.scope}:{digest}") or []
        if artifact_type:
            found = [d for d in found if d.get("artifactType") == artifact_type]
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}).encode()
        return ReferrersResult(body, OCI_INDEX, "artifactType" if artifact_type else None,
                               cache_status="local")

    # uploads -----------------------------------------------------------------------------------
    def _link_blob(self, target: Target, digest: Digest) -> None:
        self._meta.mark_pushed(str(digest))
        self._meta.grant(str(digest), target.scope, False)
        self._meta.ensure_repo(target.repo)

    async def start_upload(self, target: Target, algorithm: str, client: Client) -> UploadState:
        """A push makes the repository local at once, so a default upstream no longer answers for it."""
        session = self._uploads.create(target.repo, algorithm)
        self._meta.ensure_repo(target.repo)
        return UploadState(session.id, 0)

    async def mount_blob(self, target: Target, digest: Digest, source: Target | None, client: Client) -> bool:
        """Link a blob readable elsewhere into ``target``; False when it cannot (the client uploads it)."""
        if self._blobs.size(digest) is None:
            return False
        visibility = self._meta.visibility(str(digest), fresh=True)
        if source is None:
            allowed = any(scope.startswith("/") for scope in visibility.repos)
        elif source.upstream is None:
            allowed = source.scope in visibility.repos
        else:
            allowed = visibility.public and source.scope in visibility.repos
        if not allowed:
            return False
        self._link_blob(target, digest)
        return True

    async def upload_chunk(self, target: Target, upload_id: str, chunk: Chunk, client: Client) -> UploadState:
        session = self._uploads.get(target.repo, upload_id)
        offset = await self._uploads.append(session, chunk.data, chunk.start, chunk.length)
        return UploadState(session.id, offset)

    async def upload_status(self, target: Target, upload_id: str, client: Client) -> UploadState:
        session = self._uploads.get(target.repo, upload_id)
        self._uploads.touch(session)
        return UploadState(session.id, session.offset)

    async def finish_upload(self, target: Target, upload_id: str, digest: Digest, chunk: Chunk | None,
                            client: Client) -> Digest:
        """Append the last chunk (if any), verify, mark pushed, then move the data into the store."""
        session = self._uploads.get(target.repo, upload_id)
        if chunk is not None:  # a broken closing request keeps what arrived, like a PATCH
            await self._uploads.append(session, chunk.data, chunk.start, chunk.length)
        path, size = await self._uploads.finish(session, digest)
        self._meta.mark_pushed(str(digest))  # before the store sees it: never evicted
        if self._blobs.size(digest) is None:
            self._blobs.adopt(path, digest, size)
        else:
            self._uploads.discard(path)
        self._link_blob(target, digest)
        return digest

    async def cancel_upload(self, target: Target, upload_id: str, client: Client) -> None:
        self._uploads.cancel(self._uploads.get(target.repo, upload_id))

    # manifests ---------------------------------------------------------------------------------
    async def put_manifest(self, target: Target, reference: str, body: bytes, content_type: str | None,
                           tags: list[str], client: Client) -> PushedManifest:
        if len(body) > MAX_MANIFEST_BYTES:
            raise ManifestTooLarge(f"a manifest may be at most {MAX_MANIFEST_BYTES} bytes")
        tags = [validate_tag(t) for t in tags]
        if is_digest(reference):
            digest = Digest.parse(reference)
            actual = Digest.of(body, digest.algorithm)
            if actual != digest:
                raise DigestInvalid(f"manifest has digest {actual}, not {digest}")
        else:
            tags.insert(0, validate_tag(reference))
            digest = Digest.of(body)
        header_type = (content_type or "").split(";")[0].strip().lower()
        parsed = await parse_manifest_off_loop(body, header_type if header_type in MANIFEST_TYPES else None,
                                               self._max_descriptors, self._manifest_thread)
        media_type = header_type if header_type in MANIFEST_TYPES else parsed.media_type
        if media_type not in MANIFEST_TYPES:
            raise ManifestInvalid(f"unsupported manifest media type {media_type[:100]!r}")
        if media_type in (OCI_MANIFEST, DOCKER_MANIFEST) and parsed.config_media_type is None:
            raise ManifestInvalid("an image manifest must have a config descriptor")
        self._blobs.space.ensure_room(len(body))  # refused before anything is written
        if len(parsed.blobs) + len(parsed.manifests) > _INLINE_DESCRIPTORS:  # work per descriptor: off the loop
            await asyncio.get_running_loop().run_in_executor(self._manifest_thread, self._link_references,
                                                             target, parsed)
        else:
            self._link_references(target, parsed)
        # commit: what names the manifest; gc spares what was linked within its grace period
        self._meta.mark_pushed(str(digest))
        if self._blobs.size(digest) is None:
            self._blobs.put_bytes(body, digest)
        self._meta.set_manifest_type(str(digest), media_type)
        self._meta.grant(str(digest), target.scope, False)
        self._meta.add_repo_manifest(target.repo, str(digest))
        now = time.time()
        for tag in dict.fromkeys(tags):
            self._meta.set_tag(target.scope, tag, TagRecord(str(digest), media_type, len(body), now))
            self._meta.add_repo_tag(target.repo, tag)
            self._invalidation.tag_changed(target.scope, tag)
        subject = parsed.subject.digest if parsed.subject else None
        if subject is not None:
            descriptor = {"mediaType": media_type, "digest": str(digest), "size": len(body)}
            if parsed.artifact_type:
                descriptor["artifactType"] = parsed.artifact_type
            if parsed.annotations:
                descriptor["annotations"] = parsed.annotations
            self._meta.add_referrer(target.scope, str(subject), descriptor)
        return PushedManifest(digest, list(dict.fromkeys(tags)), subject)

    def _link_references(self, target: Target, parsed) -> None:
        """Check that every blob and child manifest is readable here, then link each into the
        repository (renewing gc's grace; public cached content becomes pushed content)."""
        checked = self._check_references(target, parsed)
        foreign = dict.fromkeys(d.digest for d in parsed.blobs if d.non_distributable and d.digest not in checked)
        for digest in (*checked, *(d for d in foreign if self._readable(target, d))):
            self._meta.mark_pushed(str(digest))
            self._meta.grant(str(digest), target.scope, False)

    def _check_references(self, target: Target, parsed) -> dict[Digest, None]:
        """Each blob (but foreign layers) and child manifest must be readable here; each digest is
        looked at once, however often the manifest names it. Returns the digests checked."""
        blobs = dict.fromkeys(d.digest for d in parsed.blobs if not d.non_distributable)
        for digest in blobs:
            if self._blobs.size(digest) is None or not self._readable(target, digest):
                raise ManifestBlobUnknown(f"blob {digest} is not in {target.repo}", detail={"digest": str(digest)})
        for digest in dict.fromkeys(d.digest for d in parsed.manifests):
            if (self._meta.manifest_type(str(digest)) is None or self._blobs.size(digest) is None
                    or not self._readable(target, digest)):
                raise ManifestBlobUnknown(f"manifest {digest} is not in {target.repo}",
                                          detail={"digest": str(digest)})
        blobs.update(dict.fromkeys(d.digest for d in parsed.manifests))
        return blobs

    async def delete_manifest(self, target: Target, reference: str, client: Client) -> None:
        """By tag: remove the tag. By digest: remove the manifest from the repository, with its tags."""
        record = self._meta.repo(target.repo)
        if record is None:
            raise NameUnknown(f"repository {target.repo} is not known")
        if not is_digest(reference):
            tag = validate_tag(reference)
            if self._meta.tag(target.scope, tag) is None:
                raise ManifestUnknown(f"tag {tag} unknown in {target.repo}")
            self._meta.delete_tag(target.scope, tag)
            self._meta.remove_repo_tag(target.repo, tag)
            self._invalidation.tag_changed(target.scope, tag)
            return
        digest = Digest.parse(reference)
        if self._meta.manifest_type(str(digest)) is None or not self._linked(target, digest):
            raise ManifestUnknown(f"manifest {digest} unknown in {target.repo}")
        for tag in list(record.get("tags", [])):
            tagged = self._meta.tag(target.scope, tag)
            if tagged is not None and tagged.digest == str(digest):
                self._meta.delete_tag(target.scope, tag)
                self._meta.remove_repo_tag(target.repo, tag)
                self._invalidation.tag_changed(target.scope, tag)
        self._meta.revoke(str(digest), target.scope)
        self._meta.remove_repo_manifest(target.repo, str(digest))
        self._invalidation.tag_changed(target.scope, str(digest))  # answers by digest stop too
        body = self._blobs.read_bytes(digest)
        if body is not None:
            try:
                parsed = parse_manifest(body, self._meta.manifest_type(str(digest)))
            except OCIError:
                parsed = None
            if parsed is not None and parsed.subject is not None:
                self._meta.remove_referrer(target.scope, str(parsed.subject.digest), str(digest))

    async def delete_blob(self, target: Target, digest: Digest, client: Client) -> None:
        """Unlink a blob from the repository; the bytes go when gc finds nothing else needs them."""
        if self._blobs.size(digest) is None or not self._linked(target, digest):
            raise BlobUnknown(f"blob {digest} unknown in {target.repo}")
        self._meta.revoke(str(digest), target.scope)


def _page(names: list[str], n: int | None, last: str | None) -> tuple[list[str], str | None]:
    """Sorted names after ``last``, at most ``n``; the query of the next page when there is more."""
    found = sorted(name for name in names if last is None or name > last)
    if n is None or len(found) <= n:
        return found, None
    found = found[:n]
    return found, (urlencode({"n": n, "last": found[-1]}) if found else None)
