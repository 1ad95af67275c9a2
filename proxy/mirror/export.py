"""``wharf mirror export``: what a store made visible by mirroring, written as one bundle.

What is exported (``select_*``):
- a mirror list: what the last sync of that list made visible (its records); an image of the list
  with no record (never synced, or ``into: cache``, which keeps none) is reported as a problem;
- ``--all``: every image every holder keeps (every synced list, every import) — cached content
  pulled by clients is not exported (the store keeps no index of it);
- ``--pulled-since DAYS``: the images of every holder of which at least one blob (a config or a
  layer) was read within DAYS. A blob's last read is its file's mtime: ``wharf serve`` writes the
  reads it served to the mtimes every ``cache.access_flush_interval``, so the newest reads of a
  running server may count only after that interval.

A delta (``base``: the digests the other side holds, from an older bundle's inventory or from
``wharf mirror inventory`` run there) leaves out every manifest and blob the base has; its
``index.json`` still names every image and tag, so importing it reasserts them. An image whose
content is no longer all in the store is reported and left out; the rest is written.
The tar is written in a worker thread: its cost grows with the content. Other tools read it as an
OCI image layout; skopeo (``oci-archive:BUNDLE:NAME:TAG``) finds OCI manifests and indexes only,
not Docker schema 2 ones, which it skips in any OCI layout (those travel, and Wharf imports them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from proxy.mirror import bundle
from proxy.mirror.lists import MirrorList
from proxy.mirror.records import MirroredImage, MirrorRecords
from proxy.oci.digest import Digest
from proxy.storage.blobs import BlobStore


@dataclass
class Selection:
    images: list[MirroredImage]
    problems: list[str] = field(default_factory=list)


@dataclass
class ExportReport:
    path: Path
    images: int
    tags: int
    written: int             # manifests and blobs in the tar
    written_bytes: int
    left_out: int            # held by the base (a delta)
    bundle_id: str
    base_id: str | None
    problems: list[str]


def select_list(records: MirrorRecords, mirror_list: MirrorList) -> Selection:
    """The images the last sync of ``mirror_list`` made visible."""
    recorded = records.images(mirror_list.name)
    selection = Selection([])
    for entry in mirror_list.images:
        image = recorded.get(entry.name)
        if image is None:
            selection.problems.append(f"{entry.name}: no record of a sync of list {mirror_list.name} "
                                      f"(not synced yet); not exported")
        else:
            selection.images.append(image)
    return selection


def _merge(images: list[MirroredImage]) -> list[MirroredImage]:
    """One image per name: holders that mirror the same repository add their tags together."""
    merged: dict[str, MirroredImage] = {}
    for image in images:
        found = merged.get(image.name)
        merged[image.name] = image if found is None else bundle.combine(found, image)
    return [merged[name] for name in sorted(merged)]


def select_all(records: MirrorRecords) -> Selection:
    return Selection(_merge([image for _, image in records.all_images()]))


def select_pulled_since(records: MirrorRecords, blobs: BlobStore, days: float,
                        now: float | None = None) -> Selection:
    """Images with a config or layer read within ``days`` (a blob's last read: its mtime)."""
    cutoff = (now if now is not None else time.time()) - days * 86400

    def read_recently(image: MirroredImage) -> bool:
        for digest in image.blobs:
            try:
                if os.stat(blobs.path(Digest.parse(digest))).st_mtime >= cutoff:
                    return True
            except FileNotFoundError:
                continue
        return False

    return Selection([image for image in _merge([i for _, i in records.all_images()]) if read_recently(image)])


def index_descriptors(images: list[MirroredImage], sizes: dict[str, int]) -> list[dict]:
    """``index.json``'s manifests: one per (image, tag), named in full."""
    found = []
    for image in images:
        for tag, digest in sorted(image.tags.items()):
            found.append({"mediaType": image.manifests[digest], "digest": digest, "size": sizes[digest],
                          "annotations": {bundle.REF_NAME: f"{image.name}:{tag}",
                                          bundle.WHARF_REGISTRY: image.upstream,
                                          bundle.WHARF_REPOSITORY: image.repo}})
    return found


def _layout_files(images: list[MirroredImage], sizes: dict[str, int], inventory: set[str],
                  base_id: str | None, base: set[str] | None, bundle_id: str) -> list[tuple[str, bytes]]:
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": index_descriptors(images, sizes)}
    description = bundle.Description(
        bundle_id, time.time(), images, sorted(inventory),
        None if base is None else {"id": base_id, "digests": len(base)})
    return [(bundle.LAYOUT_FILE, bundle.LAYOUT), (bundle.DESCRIPTION_FILE, description.to_bytes()),
            (bundle.INDEX_FILE, json.dumps(index, indent=1).encode())]


def _content_hex(blobs: BlobStore, digest: str) -> str:
    """The sha256 a checksum line needs: the name of a sha256 blob, read for any other algorithm."""
    parsed = Digest.parse(digest)
    return parsed.hex if parsed.algorithm == "sha256" else bundle.sha256_of_file(blobs.path(parsed))


class Interrupted(Exception):
    """The command was interrupted; the partial bundle was removed."""


class _Stoppable:
    """A blob's file, read by the tar writer, that stops the copy once ``stop`` is set."""

    def __init__(self, file, stop: threading.Event) -> None:
        self._file, self._stop = file, stop

    def read(self, size: int = -1) -> bytes:
        if self._stop.is_set():
            raise Interrupted()
        return self._file.read(size)


def write_bundle(blobs: BlobStore, images: list[MirroredImage], out: Path, compression: str,
                 base: set[str] | None = None, base_id: str | None = None,
                 stop: threading.Event | None = None) -> ExportReport:
    """Write the bundle (blocking: run it in a worker thread). ``images`` must be complete."""
    stop = stop or threading.Event()
    bundle_id = bundle.new_id()
    content = sorted(set().union(*(image.content() for image in images))) if images else []
    sizes = {digest: blobs.size(Digest.parse(digest)) or 0 for digest in content}
    chosen = [digest for digest in content if base is None or digest not in base]
    manifests = {digest for image in images for digest in image.manifests}
    chosen.sort(key=lambda digest: (digest not in manifests, digest))  # manifests first: they are small
    inventory = set(content) | (base or set())
    files = _layout_files(images, sizes, inventory, base_id, base, bundle_id)
    checksums = [(name, hashlib.sha256(data).hexdigest()) for name, data in files]
    checksums += [(bundle.blob_path(digest), _content_hex(blobs, digest)) for digest in chosen]
    written_bytes = 0
    with bundle.BundleWriter(out, compression) as writer:
        writer.add_bytes(files[0][0], files[0][1])  # oci-layout first
        writer.add_bytes(bundle.CHECKSUMS_FILE, bundle.checksum_lines(checksums))
        for name, data in files[1:]:
            writer.add_bytes(name, data)
        for digest in chosen:
            with open(blobs.path(Digest.parse(digest)), "rb") as file:
                size = os.fstat(file.fileno()).st_size
                writer.add_file(bundle.blob_path(digest), _Stoppable(file, stop), size)
                written_bytes += size
    return ExportReport(out, len(images), sum(len(i.tags) for i in images), len(chosen), written_bytes,
                        len(content) - len(chosen), bundle_id, base_id, [])


async def export_bundle(records: MirrorRecords, blobs: BlobStore, selection: Selection, out: Path,
                        compression: str = "none", base: set[str] | None = None,
                        base_id: str | None = None) -> ExportReport:
    """Write ``selection`` to ``out``; images whose content is incomplete are reported, left out."""
    problems = list(selection.problems)
    if not selection.images:
        problems.append("nothing to export: no mirrored or imported image was selected (the bundle holds none)")
    complete = []
    for image in selection.images:
        missing = records.missing(image)
        if missing:
            problems.append(f"{image.name}: {len(missing)} manifest(s) or blob(s) are no longer in the store "
                            f"(first: {missing[0]}); run wharf mirror sync again; not exported")
        else:
            complete.append(image)
    stop = threading.Event()
    try:
        report = await asyncio.to_thread(write_bundle, blobs, complete, out, compression, base, base_id, stop)
    except asyncio.CancelledError:  # the thread stops at its next chunk and removes the partial file
        stop.set()
        raise
    report.problems = problems
    return report
