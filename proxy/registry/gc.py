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
- upload sessions idle longer than the upload limit are deleted with their data;
- one pass runs per store at a time (a flock on ``gc.lock`` in the store root, across processes
  and replicas of a shared volume): a pass that finds another running is skipped;
- the pass never holds the event loop for work that grows with the store: marking runs in a worker
  thread, and the sweep reads the blob index (``proxy.storage.blob_index``) a batch at a time, each
  batch checked and swept in a worker thread (a store whose index is not built yet is listed from
  disk, a batch at a time too). A pushed blob handed back to the cache moves to its class in the index.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

from proxy.errors import OCIError
from proxy.oci.digest import Digest
from proxy.oci.media import parse_manifest
from proxy.storage.blob_index import BATCH, CACHED, KEPT, PUSHED
from proxy.storage.blobs import BlobStore
from proxy.storage.meta import MetaStore
from proxy.storage.uploads import UploadStore

log = logging.getLogger("wharf.gc")
_LOCK_FILE = "gc.lock"


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
    skipped: bool = False  # another process of the store was collecting

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


def _stored_batches(blobs: BlobStore) -> Iterator[list[tuple[str, int]]]:
    """Every stored blob as batches of (digest, size): from the index, or from disk until it is built."""
    if blobs.index.built:
        yield from blobs.index.batches()
        return
    listing = ((str(digest), size) for digest, size, _ in blobs.iter_blobs())
    while batch := list(itertools.islice(listing, BATCH)):
        yield batch


async def collect(blobs: BlobStore, meta: MetaStore, uploads: UploadStore, grace: float,
                  dry_run: bool = False, held: Iterable[str] = ()) -> GcReport:
    """One pass: expire uploads, mark live content (``held`` manifests included), sweep unreferenced
    pushed blobs."""
    started = time.time()
    report = GcReport(dry_run=dry_run)
    lock = blobs.try_lock(blobs.root / _LOCK_FILE)
    if lock is None:
        report.skipped = True
        log.info("gc: another process of the store is collecting; skipped")
        return report
    try:
        if not dry_run:
            report.uploads_expired = await asyncio.to_thread(uploads.expire)
        live = await asyncio.to_thread(live_content, blobs, meta, list(held))
        report.live = len(live)
        cutoff = started - grace
        batches = _stored_batches(blobs)
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            await asyncio.to_thread(_sweep, blobs, meta, batch, live, cutoff, report)
    finally:
        blobs.unlock(lock)
    report.seconds = round(time.time() - started, 3)
    log.info("gc: %s", report.as_dict())
    return report


def _sweep(blobs: BlobStore, meta: MetaStore, batch: list[tuple[str, int]], live: set[str],
           cutoff: float, report: GcReport) -> None:
    """Sweep one batch (blocking: a worker thread); nothing between a check and its removal waits."""
    pushed: list[str] = []
    for key, size in batch:
        pushed_at = meta.pushed_at(key)
        if pushed_at is None:
            continue  # cached content
        if key in live:
            pushed.append(key)
            continue
        if pushed_at > cutoff:
            report.kept_recent += 1
            pushed.append(key)
            continue
        digest = Digest.parse(key)
        if blobs.is_being_read(digest):
            continue
        if report.dry_run:
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
            blobs.index.set_class(key, KEPT if meta.is_kept(key) else CACHED)
            continue
        freed = blobs.remove(digest)
        if freed:
            report.removed += 1
            report.freed_bytes += freed
            meta.forget(key)
    if pushed and not report.dry_run:
        blobs.index.set_classes(pushed, PUSHED)  # pushed content linked to a blob that was cached
