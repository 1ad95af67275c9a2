"""Garbage collection of pushed content: ``wharf gc`` and the periodic background pass.

Rules:
- live content is every manifest some local repository holds (tagged or not), and everything those
  manifests reference, recursively through indexes; so are the ``held`` manifests (deleted package
  versions that may still be restored: ``Packages.held_digests``) and what they reference, until
  their retention ends; everything else that was pushed is garbage;
- cached content (never pushed) is not gc's business: the cache budget evicts it;
- content pushed or linked within ``grace`` seconds before the pass began is never collected, so a
  push in progress (blobs uploaded, manifest not yet sent) is safe; a manifest push renews the
  grace of everything it references before it commits, and the renewal is read from disk right
  before each removal, so a concurrent push in another process is seen too;
- a blob that is being read is skipped; a pushed blob that is also cached for an upstream
  repository is only unlinked from local repositories and handed back to the cache budget;
- upload sessions idle longer than the upload limit are deleted with their data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Iterable

from proxy.errors import OCIError
from proxy.oci.digest import Digest
from proxy.oci.media import parse_manifest
from proxy.storage.blobs import BlobStore
from proxy.storage.meta import MetaStore
from proxy.storage.uploads import UploadStore

log = logging.getLogger("wharf.gc")
_YIELD_EVERY = 500


@dataclass(slots=True)
class GcReport:
    live: int = 0
    removed: int = 0
    freed_bytes: int = 0
    released_to_cache: int = 0
    kept_recent: int = 0
    uploads_expired: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def live_content(blobs: BlobStore, meta: MetaStore, held: Iterable[str] = ()) -> set[str]:
    """Every digest a manifest of a local repository (or a ``held`` manifest) needs, the manifests
    themselves included."""
    live: set[str] = set()
    pending = [digest for name in meta.catalog() for digest in (meta.repo(name) or {}).get("manifests", [])]
    pending.extend(held)
    while pending:
        key = pending.pop()
        if key in live:
            continue
        live.add(key)
        try:
            digest = Digest.parse(key)
        except OCIError:
            continue
        body = blobs.read_bytes(digest)
        if body is None:
            continue
        try:
            parsed = parse_manifest(body, meta.manifest_type(key))
        except OCIError:
            continue
        live.update(str(d.digest) for d in parsed.blobs)
        pending.extend(str(d.digest) for d in parsed.manifests)
    return live


async def collect(blobs: BlobStore, meta: MetaStore, uploads: UploadStore, grace: float,
                  dry_run: bool = False, held: Iterable[str] = ()) -> GcReport:
    """One pass: expire uploads, mark live content (``held`` manifests included), sweep unreferenced
    pushed blobs."""
    started = time.time()
    report = GcReport(dry_run=dry_run)
    if not dry_run:
        report.uploads_expired = uploads.expire()
    live = live_content(blobs, meta, held)
    report.live = len(live)
    cutoff = started - grace
    for count, (digest, size, _) in enumerate(list(blobs.iter_blobs()), 1):
        if count % _YIELD_EVERY == 0:
            await asyncio.sleep(0)  # let requests run; nothing below awaits between check and removal
        key = str(digest)
        if key in live:
            continue
        pushed_at = meta.pushed_at(key)
        if pushed_at is None:
            continue  # cached content
        if pushed_at > cutoff:
            report.kept_recent += 1
            continue
        if blobs.is_being_read(digest):
            continue
        if dry_run:
            report.removed += 1
            report.freed_bytes += size
            continue
        visibility = meta.visibility(key)
        cached_elsewhere = visibility.public or any(not scope.startswith("/") for scope in visibility.repos)
        for scope in visibility.repos:
            if scope.startswith("/"):
                meta.revoke(key, scope)
        meta.unmark_pushed(key)
        if cached_elsewhere:
            report.released_to_cache += 1
            continue
        freed = blobs.remove(digest)
        if freed:
            report.removed += 1
            report.freed_bytes += freed
            meta.forget(key)
    report.seconds = round(time.time() - started, 3)
    log.info("gc: %s", report.as_dict())
    return report
