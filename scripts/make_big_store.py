#!/usr/bin/env python3
"""Write a synthetic Wharf store of many small cached blobs (1 KiB), for the big-store benchmark (issue 12).

    python scripts/make_big_store.py STORE_ROOT                       # 1,000,000 blobs, 200,000 manifests, 100,000 tags
    python scripts/make_big_store.py STORE_ROOT --blobs 100000 --manifests 20000 --tags 10000

The store has the real layout: ``blobs/sha256/<hex>`` files (the blobs, and each manifest's bytes), and
the metadata ``MetaStore`` keeps for cached upstream content (``mt:`` media types, ``vis:`` public
visibility in the repository, ``tag:`` records), under the upstream name ``--upstream``
(``upstream.local``) and repositories ``big/r<n>``. Manifest ``i`` is an OCI image manifest whose
config and layers are the next blobs in order; blob ``i`` was last accessed ``i`` seconds after the
oldest, so eviction order is known. No blob index is written (Wharf builds it on its first start).
Blob files are written by one process per core; the metadata in transactions of ``BATCH`` records.
Prints a JSON summary (counts, bytes, a sample of digests to pull, seconds taken).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.oci.media import OCI_MANIFEST  # noqa: E402
from proxy.storage.meta import MetaStore, TagRecord  # noqa: E402

BATCH = 5000
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


BLOB_SIZE = 1024  # near a manifest's size, so 10 % of the bytes is 10 % of the files


def blob_bytes(index: int) -> bytes:
    return (b"wharf big-store blob %d\n" % index).ljust(BLOB_SIZE, b".")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(index: int, per_manifest: int, blobs: int) -> bytes:
    """Manifest ``index``: the next ``per_manifest`` blobs (config first), sorted-key JSON."""
    first = (index * per_manifest) % blobs
    members = [(first + k) % blobs for k in range(per_manifest)]
    descriptor = lambda media, n: {"mediaType": media, "digest": "sha256:" + _digest(blob_bytes(n)),  # noqa: E731
                                   "size": len(blob_bytes(n))}
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(CONFIG_TYPE, members[0]),
            "layers": [descriptor(LAYER_TYPE, n) for n in members[1:]]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _write_range(args: tuple[str, int, int, float, int, int]) -> int:
    """Write blobs [start, stop) and their manifests' files; returns the bytes written."""
    root, start, stop, oldest, per_manifest, total_blobs = args
    directory = Path(root) / "blobs" / "sha256"
    written = 0
    for index in range(start, stop):
        data = blob_bytes(index)
        path = directory / _digest(data)
        path.write_bytes(data)
        os.utime(path, (oldest + index, oldest + index))
        written += len(data)
    return written


def _write_manifests(args: tuple[str, int, int, float, int, int]) -> int:
    root, start, stop, oldest, per_manifest, total_blobs = args
    directory = Path(root) / "blobs" / "sha256"
    written = 0
    for index in range(start, stop):
        data = manifest_bytes(index, per_manifest, total_blobs)
        path = directory / _digest(data)
        path.write_bytes(data)
        when = oldest + total_blobs + index
        os.utime(path, (when, when))
        written += len(data)
    return written


def _ranges(count: int, parts: int) -> list[tuple[int, int]]:
    step = max(1, -(-count // parts))
    return [(start, min(count, start + step)) for start in range(0, count, step)]


def write_metadata(root: Path, upstream: str, blobs: int, manifests: int, tags: int, per_manifest: int,
                   repositories: int) -> None:
    """Media types, visibility and tags as pull-through caching leaves them, a transaction per batch."""
    meta = MetaStore(root / "meta")
    disk = meta._disk  # batched transactions: one per BATCH records, not one per record
    now = time.time()

    def records():
        for index in range(blobs):
            yield f"vis:sha256:{_digest(blob_bytes(index))}", {"public": True,
                                                              "repos": [f"{upstream}/big/r{index % repositories}"]}
        for index in range(manifests):
            data = manifest_bytes(index, per_manifest, blobs)
            digest = "sha256:" + _digest(data)
            scope = f"{upstream}/big/r{index % repositories}"
            yield f"mt:{digest}", OCI_MANIFEST
            yield f"vis:{digest}", {"public": True, "repos": [scope]}
            if index < tags:
                yield f"tag:{scope}:t{index}", asdict(TagRecord(digest, OCI_MANIFEST, len(data), now, True))

    stream = records()
    while True:
        with disk.transact():
            count = 0
            for key, value in stream:
                disk.set(key, value)
                count += 1
                if count >= BATCH:
                    break
        if count < BATCH:
            break
    meta.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the store root (storage.root of the Wharf to start on it)")
    parser.add_argument("--blobs", type=int, default=1_000_000)
    parser.add_argument("--manifests", type=int, default=200_000)
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--repositories", type=int, default=1000)
    parser.add_argument("--upstream", default="upstream.local")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    started = time.time()
    per_manifest = max(2, min(6, args.blobs // max(1, args.manifests)))
    (args.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (args.root / "tmp").mkdir(parents=True, exist_ok=True)
    oldest = started - args.blobs - args.manifests - 86400
    work = [(str(args.root), a, b, oldest, per_manifest, args.blobs) for a, b in _ranges(args.blobs, args.processes * 8)]
    manifest_work = [(str(args.root), a, b, oldest, per_manifest, args.blobs)
                     for a, b in _ranges(args.manifests, args.processes * 4)]
    with multiprocessing.Pool(args.processes) as pool:
        metadata = pool.apply_async(write_metadata, (args.root, args.upstream, args.blobs, args.manifests,
                                                     min(args.tags, args.manifests), per_manifest, args.repositories))
        blob_bytes_total = sum(pool.imap_unordered(_write_range, work))
        manifest_bytes_total = sum(pool.imap_unordered(_write_manifests, manifest_work))
        metadata.get()
    sample = {
        "blobs": ["sha256:" + _digest(blob_bytes(i)) for i in range(0, args.blobs, max(1, args.blobs // 100))],
        "manifests": [("sha256:" + _digest(manifest_bytes(i, per_manifest, args.blobs)), f"big/r{i % args.repositories}")
                      for i in range(0, args.manifests, max(1, args.manifests // 100))],
    }
    summary = {"root": str(args.root), "upstream": args.upstream, "blobs": args.blobs, "manifests": args.manifests,
               "tags": min(args.tags, args.manifests), "blob_bytes": blob_bytes_total,
               "manifest_bytes": manifest_bytes_total, "seconds": round(time.time() - started, 1), "sample": sample}
    (args.root / "big-store.json").write_text(json.dumps(summary))
    return summary


if __name__ == "__main__":
    result = main()
    print(json.dumps({k: v for k, v in result.items() if k != "sample"}))
