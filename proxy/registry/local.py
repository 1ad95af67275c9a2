"""The embedded registry: repositories whose content was pushed to Wharf (read side).

A blob or manifest is visible in a local repository only when that repository links it
(``MetaStore.grant`` with the repository's scope); the push path records those links.
"""

from __future__ import annotations

import json

from proxy.errors import BlobUnknown, ManifestUnknown, NameUnknown
from proxy.oci.digest import Digest, is_digest
from proxy.oci.media import OCI_INDEX, accepts
from proxy.oci.names import validate_tag
from proxy.registry.base import BlobResult, Client, ManifestResult, ReferrersResult, TagsPage, Target
from proxy.storage.blobs import BlobStore
from proxy.storage.meta import MetaStore


class LocalRegistry:
    def __init__(self, blobs: BlobStore, meta: MetaStore) -> None:
        self._blobs = blobs
        self._meta = meta

    def is_local_repo(self, name: str) -> bool:
        return bool(self._meta.document(f"repo:{name}"))

    def _linked(self, target: Target, digest: Digest) -> bool:
        return target.scope in self._meta.visibility(str(digest)).repos

    async def manifest(self, target: Target, reference: str, accept: list[str], client: Client,
                       head: bool) -> ManifestResult:
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
        body = None if head else self._blobs.read_bytes(digest)
        return ManifestResult(digest, media_type, size, body, "local")

    async def blob(self, target: Target, digest: Digest, client: Client, head: bool) -> BlobResult:
        size = self._blobs.size(digest)
        if size is None or not self._linked(target, digest):
            raise BlobUnknown(f"blob {digest} unknown in {target.repo}")
        return BlobResult(digest, size, path=self._blobs.path(digest),
                          reading=lambda: self._blobs.reading(digest), cache_status="local")

    async def tags(self, target: Target, n: int | None, last: str | None, client: Client) -> TagsPage:
        tags = self._meta.document(f"repo:{target.repo}")
        if not tags:
            raise NameUnknown(f"repository {target.repo} is not known")
        names = sorted(t for t in tags.get("tags", []) if last is None or t > last)
        link = None
        if n is not None and len(names) > n:
            names = names[:n]
            link = f"n={n}&last={names[-1]}" if names else None
        body = json.dumps({"name": target.repo, "tags": names}).encode()
        return TagsPage(body, link, "local")

    async def referrers(self, target: Target, digest: Digest, artifact_type: str | None,
                        client: Client) -> ReferrersResult:
        found = self._meta.document(f"referrers:{target.scope}:{digest}") or []
        if artifact_type:
            found = [d for d in found if d.get("artifactType") == artifact_type]
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}).encode()
        return ReferrersResult(body, OCI_INDEX, "artifactType" if artifact_type else None,
                               cache_status="local")
