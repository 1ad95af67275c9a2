"""Blob upload sessions: the data of pushes in progress, on disk, until they are committed.

Layout under the storage root: ``uploads/<id>.data`` holds the bytes received so far and
``uploads/<id>.json`` says which repository and digest algorithm the session is for. The
session's offset is the size of its data file; its last activity is that file's mtime, so a
session survives a restart and any worker process can continue it.

Rules:
- chunks must arrive in order: a chunk that does not start at the current offset is refused
  (``RANGE_INVALID``, 416) and the session stays as it was;
- a session may never grow past ``max_bytes`` (the layer limit): a declared size over it is refused
  before any byte is read, a body that crosses it is stopped at that byte; either way the session
  is dropped with its data (``SIZE_INVALID``);
- a session idle for ``idle_seconds`` is expired: requests for it get ``BLOB_UPLOAD_UNKNOWN`` and
  ``expire()`` (run periodically, and by ``wharf gc``) deletes its files;
- a connection dropped mid-chunk keeps the bytes that arrived (a client may ask for the offset
  with GET and resume); if nobody does, the session expires like any other;
- on a full disk (``proxy.storage.space``) a new session or a chunk is refused before any byte is
  written, and the session stays as it was; a chunk that meets ENOSPC while it is written drops
  the session with its data (the client sees ``StoreFull``, 507, and starts again);
- ``finish`` verifies the digest and hands back the data file for the caller to move into the
  blob store (the caller marks it pushed first); a mismatch drops the session.

Hashing runs as bytes arrive while this process holds the session; a session continued after a
restart, or by another worker, is hashed from its file at the end (in a thread).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterable

from proxy.errors import BlobUploadUnknown, DigestInvalid, RangeInvalid, SizeInvalid
from proxy.oci.digest import Digest
from proxy.storage.appender import AlignedAppender
from proxy.storage.space import StoreSpace, is_no_room

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SUPPORTED = ("sha256", "sha512")


@dataclass(slots=True)
class UploadSession:
    id: str
    repo: str
    algorithm: str
    data_path: Path
    offset: int = 0
    hasher: "hashlib._Hash | None" = None  # None: hash the file at the end
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _hash_file(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while True:
            block = f.read(1024 * 1024)
            if not block:
                return hasher.hexdigest()
            hasher.update(block)


class UploadStore:
    def __init__(self, root: Path, idle_seconds: float, max_bytes: int, space: StoreSpace | None = None) -> None:
        self.dir = Path(root) / "uploads"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.idle_seconds = idle_seconds
        self.max_bytes = max_bytes
        self.space = space or StoreSpace(self.dir, 0)
        self._live: dict[str, UploadSession] = {}

    def _paths(self, upload_id: str) -> tuple[Path, Path]:
        return self.dir / f"{upload_id}.data", self.dir / f"{upload_id}.json"

    # lifecycle -------------------------------------------------------------------------------
    def create(self, repo: str, algorithm: str = "sha256") -> UploadSession:
        if algorithm not in _SUPPORTED:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:50]!r}")
        self.space.ensure_room()
        upload_id = uuid.uuid4().hex
        data_path, state_path = self._paths(upload_id)
        try:
            state_path.write_text(json.dumps({"repo": repo, "algorithm": algorithm}))
            data_path.touch()
        except OSError as exc:
            self._remove(upload_id)
            if is_no_room(exc):
                raise self.space.ran_out() from None
            raise
        session = UploadSession(upload_id, repo, algorithm, data_path, 0, hashlib.new(algorithm))
        self._live[upload_id] = session
        return session

    def get(self, repo: str, upload_id: str) -> UploadSession:
        """The live session ``upload_id`` of ``repo``; unknown, expired or another repo's: BLOB_UPLOAD_UNKNOWN."""
        if not _ID_RE.match(upload_id):
            raise BlobUploadUnknown(f"upload {upload_id[:80]!r} is unknown")
        data_path, state_path = self._paths(upload_id)
        try:
            stat = os.stat(data_path)
        except FileNotFoundError:
            self._live.pop(upload_id, None)
            raise BlobUploadUnknown(f"upload {upload_id} is unknown or expired") from None
        session = self._live.get(upload_id)
        if time.time() - stat.st_mtime > self.idle_seconds and (session is None or not session.lock.locked()):
            self._remove(upload_id)
            raise BlobUploadUnknown(f"upload {upload_id} expired after {self.idle_seconds:g}s without activity")
        if session is None:
            try:
                state = json.loads(state_path.read_text())
            except (OSError, ValueError):
                raise BlobUploadUnknown(f"upload {upload_id} is unknown or expired") from None
            session = UploadSession(upload_id, state["repo"], state["algorithm"], data_path, stat.st_size, None)
            self._live[upload_id] = session
        elif session.offset != stat.st_size:  # another process appended: hash the file at the end
            session.offset, session.hasher = stat.st_size, None
        if session.repo != repo:
            raise BlobUploadUnknown(f"upload {upload_id} does not belong to {repo}")
        return session

    def touch(self, session: UploadSession) -> None:
        try:
            os.utime(session.data_path)
        except FileNotFoundError:
            pass

    def cancel(self, session: UploadSession) -> None:
        self._remove(session.id)

    def _remove(self, upload_id: str) -> None:
        self._live.pop(upload_id, None)
        for path in self._paths(upload_id):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def expire(self, now: float | None = None) -> int:
        """Delete sessions idle for longer than ``idle_seconds`` (and stray state files); returns how many."""
        cutoff = (now or time.time()) - self.idle_seconds
        removed = 0
        for entry in list(os.scandir(self.dir)):
            upload_id, _, suffix = entry.name.partition(".")
            session = self._live.get(upload_id)
            if session is not None and session.lock.locked():
                continue  # a request is streaming into it right now
            try:
                idle = entry.stat().st_mtime <= cutoff
            except FileNotFoundError:
                continue
            if not idle:
                continue
            if suffix == "data":
                removed += 1
                self._remove(upload_id)
            elif not (self.dir / f"{upload_id}.data").exists():
                self._remove(upload_id)  # a state file whose data is gone
        return removed

    # data ------------------------------------------------------------------------------------
    def check_declared(self, session: UploadSession, start: int | None, length: int | None) -> None:
        """Refuse an out-of-order chunk (416) or one that would cross the size limit, before reading it."""
        if start is not None and start != session.offset:
            raise RangeInvalid(f"chunk starts at {start}, the upload is at {session.offset}",
                               headers={"Range": range_header(session.offset)})
        if length is not None and session.offset + length > self.max_bytes:
            self.cancel(session)
            raise SizeInvalid(f"a blob may be at most {self.max_bytes} bytes; this one would be "
                              f"{session.offset + length}")
        self.space.ensure_room(length or 0)  # refused before reading; the session stays as it was

    async def append(self, session: UploadSession, chunks: AsyncIterable[bytes],
                     start: int | None = None, length: int | None = None) -> int:
        """Stream a chunk onto the session's data; returns the new offset.

        Bytes that arrived before a dropped connection stay; the offset says how many did.
        """
        async with session.lock:
            self.check_declared(session, start, length)
            too_big = False
            no_room: OSError | None = None
            fd = os.open(session.data_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            appender = AlignedAppender(fd, os.fstat(fd).st_size)  # whole units: faster sendfile later
            try:
                async for chunk in chunks:
                    if session.offset + len(chunk) > self.max_bytes:
                        too_big = True
                        break
                    try:
                        appender.append(chunk)
                    except OSError as exc:
                        if not is_no_room(exc):
                            raise
                        no_room = exc
                        break
                    if session.hasher is not None:
                        session.hasher.update(chunk)
                    session.offset += len(chunk)
            finally:
                try:
                    appender.flush()
                except OSError as exc:
                    if is_no_room(exc):
                        no_room = exc  # else what reached the file is what counts
                length = os.fstat(fd).st_size
                os.close(fd)
                if length != session.offset:  # the file is the truth: hash it at the end
                    session.offset, session.hasher = length, None
            if no_room is not None:  # a partial chunk on a full disk: drop the session, free its space
                self.cancel(session)
                raise self.space.ran_out()
            if too_big:
                self.cancel(session)
                raise SizeInvalid(f"a blob may be at most {self.max_bytes} bytes")
            return session.offset

    async def finish(self, session: UploadSession, digest: Digest) -> tuple[Path, int]:
        """Verify the whole upload against ``digest``; returns (data file, size) for the blob store.

        The session is gone afterwards, whatever the outcome.
        """
        async with session.lock:
            if session.hasher is not None and digest.algorithm == session.algorithm:
                actual = session.hasher.hexdigest()
            else:
                actual = await asyncio.to_thread(_hash_file, session.data_path, digest.algorithm)
            size = session.offset
            if actual != digest.hex:
                self.cancel(session)
                raise DigestInvalid(f"uploaded content has digest {digest.algorithm}:{actual}, not {digest}")
            self._live.pop(session.id, None)
            try:
                os.unlink(self._paths(session.id)[1])
            except FileNotFoundError:
                pass
            return session.data_path, size

    def discard(self, path: Path) -> None:
        """Drop a finished upload's data that the store did not need (the blob was there already)."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def range_header(offset: int) -> str:
    """``Range: 0-<last byte>`` as distribution sends it (``0-0`` for an empty upload)."""
    return f"0-{max(offset - 1, 0)}"
