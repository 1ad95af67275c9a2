"""The content-addressed blob store on local disk.

Layout under the storage root (OCI-layout friendly):
``blobs/<algorithm>/<hex>`` holds complete, verified content; ``tmp/`` holds writes in progress.
A file appears under ``blobs/`` only by an atomic rename after its digest was verified, so a
path that exists is always complete. Manifests are stored here too, byte-exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from proxy.errors import DigestInvalid, SizeInvalid
from proxy.oci.digest import ALGORITHMS, Digest
from proxy.storage.appender import AlignedAppender
from proxy.storage.blob_index import INDEX_FILE, BlobIndex
from proxy.storage.space import StoreSpace, is_no_room



class Growth:
    """How many bytes of a growing file exist, and a way to wait for more (readers follow fills)."""

    def __init__(self, temp_path: Path) -> None:
        self.temp_path = temp_path
        self.written = 0
        self.closed = False
        self._grown = asyncio.Event()

    def _notify(self) -> None:
        event, self._grown = self._grown, asyncio.Event()
        event.set()

    async def wait_for(self, offset: int) -> None:
        """Wait until more than ``offset`` bytes exist or the file is closed."""
        while self.written <= offset and not self.closed:
            await self._grown.wait()


# a temporary file untouched this long is a crash's leftover; younger ones may be another process's
# write in progress (a ``wharf mirror`` command, a worker's fill): every writer writes far more often
TMP_GRACE_SECONDS = 600.0
_COMMITS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wharf-commit")
_HOLD_SECONDS = 0.05  # a trickling download is written out anyway, for readers following it
# a stamp of the store changed this recently may not show the next change: a directory's mtime is
# kept at the clock's granularity (a jiffy; a second or two on some filesystems)
STAMP_SETTLE_SECONDS = 2.0


class BlobWriter(Growth):
    """Writes one blob to a temporary file, hashing as it goes; commit verifies then renames.

    The file grows in whole units (``proxy.storage.appender``); ``written`` counts what is in it.
    Less than a unit may be held in memory until more arrives, ``_HOLD_SECONDS`` pass, or the
    writer closes.
    """

    def __init__(self, store: "BlobStore", algorithm: str = "sha256", max_size: int | None = None,
                 temp_path: Path | None = None, hash_inline: bool = True, expected_size: int | None = None):
        super().__init__(temp_path or store.tmp_dir / f"{uuid.uuid4().hex}.part")
        self._store = store
        store.space.ensure_room(expected_size or 0)  # StoreFull before a file is made when there is no room
        try:
            self._file = open(self.temp_path, "wb", buffering=0)
        except OSError as exc:
            if is_no_room(exc):
                raise store.space.ran_out() from None
            raise
        with contextlib.suppress(BlockingIOError):  # in use: ``clean_tmp`` of another process leaves it
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._appender = AlignedAppender(self._file.fileno(), 0)
        self._held_since = 0.0
        self.algorithm = algorithm
        self._hasher = hashlib.new(algorithm) if hash_inline else None  # else the caller hashes
        self.max_size = max_size

    def write(self, chunk: bytes) -> None:
        """Append bytes; refuse to grow past ``max_size`` so a lying upstream cannot fill the disk."""
        appender = self._appender
        if self.max_size is not None and appender.length + appender.held_bytes + len(chunk) > self.max_size:
            raise SizeInvalid(f"content is larger than the declared {self.max_size} bytes")
        if self._hasher is not None:
            self._hasher.update(chunk)
        now = time.monotonic()
        if not appender.held_bytes:
            self._held_since = now
        try:
            grew = appender.append(chunk) or (now - self._held_since >= _HOLD_SECONDS and appender.flush())
        except OSError as exc:
            raise self._failed(exc) from None
        if grew:
            self._held_since = now
            self.written = appender.length
            self._notify()

    def flush_held(self) -> None:
        """Write out what is held in memory, so that the file holds every byte written so far."""
        try:
            grew = self._appender.flush()
        except OSError as exc:
            raise self._failed(exc) from None
        if grew:
            self.written = self._appender.length
            self._notify()

    def _failed(self, exc: OSError) -> BaseException:
        """A write failed: drop the temporary file; a full disk is StoreFull, anything else as it is."""
        self.abort()
        return self._store.space.ran_out(self._appender.length + self._appender.held_bytes) \
            if is_no_room(exc) else exc

    def digest(self) -> Digest:
        assert self._hasher is not None, "this writer does not hash"
        return Digest(self.algorithm, self._hasher.hexdigest())

    def commit(self, expected: Digest, expected_size: int | None = None, actual: Digest | None = None) -> Path:
        """Verify digest (and size, when known) and atomically move the file into the store.

        ``actual`` is the content's digest when the caller hashed it (``hash_inline=False``).
        """
        self._verify(expected, expected_size, actual)
        return self._store.adopt(self.temp_path, expected, self.written)

    async def commit_off_loop(self, expected: Digest, expected_size: int | None = None,
                              actual: Digest | None = None) -> Path:
        """``commit``, with the move into the store and its index and budget writes in a worker
        thread: they wait on SQLite, whose write lock an eviction or another process may hold,
        and the event loop must not. Readers see the writer closed until the fill reports."""
        self._verify(expected, expected_size, actual)
        # threads of their own: commits waiting on a lock must not take the pool every fill's
        # hashing runs in
        return await asyncio.get_running_loop().run_in_executor(
            _COMMITS, self._store.adopt, self.temp_path, expected, self.written)

    def _verify(self, expected: Digest, expected_size: int | None, actual: Digest | None) -> None:
        """Close the file; drop it (SizeInvalid, DigestInvalid) unless it is ``expected``."""
        try:
            self._close()
        except OSError as exc:
            raise self._failed(exc) from None
        if actual is None:
            actual = Digest(expected.algorithm, self.digest().hex)
        if expected_size is not None and self.written != expected_size:
            self.abort()
            raise SizeInvalid(f"received {self.written} bytes, expected {expected_size}")
        if actual != expected:
            self.abort()
            raise DigestInvalid(f"content digest {actual} does not match {expected}")

    def abort(self) -> None:
        """Drop the temporary file; readers already following it see it closed."""
        self._close(keep=False)
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass

    def _close(self, keep: bool = True) -> None:
        if not self.closed:
            try:
                if keep:
                    self._appender.flush()
                    self.written = self._appender.length
            finally:
                self.closed = True
                self._file.close()
                self._notify()


class BlobStore:
    """Complete blobs by digest on disk, with a count of readers per digest for safe eviction.

    Every blob stored or removed, and every access flushed, is written to the blob index
    (``proxy.storage.blob_index``) in the same call, so the index never needs the store listed
    except to build it once.
    """

    def __init__(self, root: Path, space: StoreSpace | None = None) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self._stamped = tuple(str(self.blob_dir / algorithm) for algorithm in ALGORITHMS)  # for ``stamp``
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.space = space or StoreSpace(self.root, 0)
        self._readers: Counter[str] = Counter()
        self._readers_lock = threading.Lock()  # eviction runs in a thread: a read starts before or after a removal
        self._last_access: dict[str, float] = {}
        self.index = BlobIndex(self.root / INDEX_FILE)

    def path(self, digest: Digest) -> Path:
        return self.blob_dir / digest.algorithm / digest.hex

    def stamp(self) -> tuple | None:
        """A value that changes whenever a blob or manifest enters or leaves the store, whoever does
        it (eviction, gc, purge, delete, a fill or an import, in any process of the store): the blob
        directories' own inode and times, which the rename that commits and the unlink that removes
        both change. None while the store changed in the last ``STAMP_SETTLE_SECONDS``: a change
        within the clock's granularity of the look could leave the times as they were, so only a
        settled stamp can vouch that nothing changed since (two stats, on any thread)."""
        stamp = []
        settled_before = time.time_ns() - int(STAMP_SETTLE_SECONDS * 1e9)
        for directory in self._stamped:
            try:
                seen = os.stat(directory)
            except FileNotFoundError:
                stamp.append(None)
                continue
            if seen.st_mtime_ns >= settled_before:
                return None
            stamp.append((seen.st_ino, seen.st_mtime_ns, seen.st_ctime_ns))
        return tuple(stamp)

    def size(self, digest: Digest) -> int | None:
        """The size of a complete blob, or None when it is not stored."""
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return None

    def read_bytes(self, digest: Digest) -> bytes | None:
        try:
            with open(self.path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def new_writer(self, algorithm: str = "sha256", max_size: int | None = None,
                   temp_path: Path | None = None, hash_inline: bool = True,
                   expected_size: int | None = None) -> BlobWriter:
        """A writer for new content; ``expected_size`` (when known) must fit, else StoreFull."""
        return BlobWriter(self, algorithm, max_size, temp_path, hash_inline, expected_size)

    def fill_paths(self, digest: Digest) -> tuple[Path, Path, Path]:
        """Where a fill of ``digest`` keeps its data, its announced size, and its leader lock.

        The names are fixed per digest so that other worker processes can find and follow a
        fill that one process leads.
        """
        stem = self.tmp_dir / f"fill-{digest.algorithm}-{digest.hex}"
        return stem.with_suffix(".part"), stem.with_suffix(".size"), stem.with_suffix(".lock")

    def try_lock(self, lock_path: Path) -> int | None:
        """Take an exclusive, non-blocking flock; the fd holds it (None: another holder has it)."""
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def lock(self, lock_path: Path) -> int:
        """Take an exclusive flock, waiting for another holder (worker threads only); the fd holds it."""
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def put_bytes(self, data: bytes, expected: Digest) -> Path:
        """Store small content (manifests) after verifying its digest (StoreFull when there is no room)."""
        writer = self.new_writer(expected.algorithm, expected_size=len(data))
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(expected, len(data))

    def adopt(self, temp_path: Path, digest: Digest, size: int) -> Path:
        """Move a verified temporary file into place; the rename is the commit."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp_path, final)
        now = time.time()
        self._last_access[str(digest)] = now
        self.index.add(str(digest), size, now)  # cached until the budget's hook says pushed or kept
        self.on_added(digest, size)
        return final

    def on_added(self, digest: Digest, size: int) -> None:
        """Hook for the budget keeper; replaced by whoever tracks sizes."""

    def evict(self, digest: Digest) -> int:
        """Drop this store's copy of a cached blob (the budget's eviction): like ``remove``, but
        never through to a tier under the store (object storage keeps its copy for every replica)."""
        return BlobStore.remove(self, digest)

    def remove(self, digest: Digest) -> int:
        """Delete a blob unless somebody is reading it; returns the bytes freed (any thread)."""
        path = self.path(digest)
        with self._readers_lock:
            if self._readers[str(digest)]:
                return 0
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                size = 0
            self.index.remove(str(digest))  # gone from disk: gone from the index, before a reader may start
        self._last_access.pop(str(digest), None)
        return size

    @contextmanager
    def reading(self, digest: Digest) -> Iterator[None]:
        """Mark a blob as being read (eviction skips it) and record the access for LRU."""
        key = str(digest)
        with self._readers_lock:
            self._readers[key] += 1
        self._last_access[key] = time.time()
        try:
            yield
        finally:
            with self._readers_lock:
                self._readers[key] -= 1
                if not self._readers[key]:
                    del self._readers[key]

    def is_being_read(self, digest: Digest) -> bool:
        return bool(self._readers[str(digest)])

    def flush_access_times(self) -> None:
        """Write remembered access times to the index and the files' mtimes (the LRU order survives
        restarts and a rebuild of the index). Blocking: call it in a worker thread."""
        remembered, self._last_access = self._last_access, {}
        pending = list(remembered.items())  # one C-level copy: a pull on the loop may still add to it
        if pending:
            self.index.touch(pending)
        for key, when in pending:
            algorithm, _, hex_part = key.partition(":")
            try:
                os.utime(self.blob_dir / algorithm / hex_part, (when, when))
            except FileNotFoundError:
                pass

    def iter_blobs(self) -> Iterator[tuple[Digest, int, float]]:
        """Every complete blob as (digest, size, last access), access from memory or mtime."""
        for algo_dir in self.blob_dir.iterdir():
            if not algo_dir.is_dir():
                continue
            for entry in os.scandir(algo_dir):
                try:
                    digest = Digest.parse(f"{algo_dir.name}:{entry.name}")
                    stat = entry.stat()
                except (OSError, DigestInvalid):
                    continue
                when = self._last_access.get(str(digest), stat.st_mtime)
                yield digest, stat.st_size, when

    def clean_tmp(self, older_than: float = 0) -> int:
        """Remove temporary files untouched for ``older_than`` seconds: a crash's leftovers (at start
        and every ``TMP_GRACE_SECONDS``, sparing what other processes of the store write now). A blob a
        live process is still writing (an import stalled on a slow medium) holds a lock and stays."""
        removed = 0
        cutoff = time.time() - older_than
        for entry in os.scandir(self.tmp_dir):
            try:
                if entry.stat().st_mtime <= cutoff and not self._in_use(entry.path):
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    @staticmethod
    def _in_use(path: str) -> bool:
        return held_by_a_process(path)


def held_by_a_process(path: str | os.PathLike) -> bool:
    """Whether a live process holds a flock on this file (a writer's temp file, a fill's note);
    the file is never created."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
