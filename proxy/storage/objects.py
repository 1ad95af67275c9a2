"""Blob bytes in S3-compatible object storage (AWS S3, MinIO, Ceph RGW), through aiobotocore.

Rules:
- a blob's key is ``<prefix>blobs/<algorithm>/<hex>``; only blobs already verified into the local
  store are uploaded, in one PUT up to ``part_size``, else in parts that become visible only when
  the upload completes; a failed multipart upload is aborted;
- every upload carries an S3 additional checksum (SHA-256, ``x-amz-checksum-sha256``) that the
  server checks against the bytes it receives. An object is *verified* when HEAD (ChecksumMode
  ENABLED) reports a whole-object SHA-256 equal to the blob's sha256 digest: only a server that
  received exactly those bytes reports it, so a writer to the bucket cannot forge it without the
  right bytes. Multipart objects report a checksum of their parts' checksums, and objects written
  by others none: those are never verified (read through only after hashing them, never
  redirected to);
- an object found under a key but not verified is uploaded again (over it), never skipped;
- nothing is trusted from an object's metadata: who may see a blob comes from Wharf's metadata;
- the bucket's look on a local miss (``head``) has ``head_timeout``; it and the reads (``stream``)
  feed one circuit breaker (``proxy/circuit.py``): after ``breaker_failures`` failures in a row
  the bucket is skipped at once (no HEAD, no GET; a write-through still tries its PUT) for
  ``breaker_cooldown`` seconds, then probed by one request. A failure is no answer (refused,
  timed out, cut short) or a 5xx/429, before or after a read's first chunk; any other answer is
  a success, and so is a read that ended or was stopped by its reader once bytes came. While the
  last read failed, a HEAD's answer counts neither way (a bucket that answers HEAD and fails GET
  is failing): only a read closes the breaker then, until it opens (after the cool-down any
  answer closes it). Storage errors are ``Unavailable``, never a traceback;
- at most ``max_uploads`` uploads run at once per process; a part streams from the file (read in
  aiohttp's executor, never on the loop, never a whole part in memory);
- write-through, delete-through and the drop of a bad object are ordered per digest (a lock per
  digest in this process): a delete that comes after an upload runs after it, so it never leaves
  an object the store no longer has;
- a write-through the bucket failed is remembered (in memory, per process, the newest
  ``MISSED_UPLOADS`` digests) and tried again, oldest first, when the bucket answers again and
  every ``breaker_cooldown`` seconds while some are left; a pass stops at the first failure, and
  uploads nothing while the breaker is open or its HEAD got no answer. A digest is forgotten once
  uploaded, deleted through, or gone from the local store (evicted: it is not uploaded then).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from proxy.circuit import CLOSED, OPEN, Circuit
from proxy.config import S3Config
from proxy.errors import Unavailable
from proxy.oci.digest import Digest

log = logging.getLogger("wharf.objects")
_CHUNK = 1024 * 1024
_HASH_CHUNK = 1024 * 1024
MISSED_UPLOADS = 10_000  # write-throughs remembered for a retry (a few hundred bytes each)


@dataclass(frozen=True, slots=True)
class StoredObject:
    size: int
    verified: bool  # the server vouches that its bytes hash to the digest (see the module's rules)
    in_parts: bool = False  # it carries a checksum of its parts' checksums (a multipart upload)


def _missing(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _server_side(error: ClientError) -> bool:
    """A 5xx (or a throttle): the bucket is failing, not answering."""
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or status == 429


def whole_object_checksum(digest: Digest) -> str | None:
    """The ``x-amz-checksum-sha256`` of an object whose bytes are the blob (sha256 digests only)."""
    if digest.algorithm != "sha256":
        return None
    return base64.b64encode(bytes.fromhex(digest.hex)).decode()


def _sha256_of(path: Path, offset: int, length: int) -> str:
    """Base64 SHA-256 of a file's region (blocking: a worker thread)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as source:
        source.seek(offset)
        left = length
        while left and (chunk := source.read(min(_HASH_CHUNK, left))):
            hasher.update(chunk)
            left -= len(chunk)
    return base64.b64encode(hasher.digest()).decode()


class FileRegion(io.RawIOBase):
    """``length`` bytes of a file from ``offset``, as a seekable stream (an upload's body).

    aiohttp reads it in its executor, a chunk at a time; it has no ``fileno`` so that the size
    comes from the region, not from the whole file."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        super().__init__()
        self._file = open(path, "rb")
        self._offset, self._length, self._position = offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + position))
        return self._position

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._position
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = os.pread(self._file.fileno(), size, self._offset + self._position)
        self._position += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a region of a file has no descriptor of its own")

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class ObjectStore:
    """A bucket (and prefix) holding verified blobs by digest; open at startup, close at shutdown."""

    def __init__(self, config: S3Config) -> None:
        self._config = config
        self._client = None
        self._stack = contextlib.AsyncExitStack()
        self.circuit = Circuit(config.breaker_failures, config.breaker_cooldown)
        self._uploads = asyncio.Semaphore(config.max_uploads)
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}
        self._read_failed = False  # the last read failed: a HEAD's answer does not close the breaker
        self.answering = asyncio.Event()  # set when the bucket answers after failing (BlobTier retries)

    @property
    def redirect(self) -> bool:
        return self._config.redirect

    @property
    def bucket(self) -> str:
        return self._config.bucket

    @property
    def retry_seconds(self) -> float:
        """How often uploads the bucket missed are tried again (its breaker's cool-down)."""
        return self._config.breaker_cooldown

    def degraded(self) -> str | None:
        """Why the bucket is skipped (for ``/readyz``), or None while its breaker is closed."""
        if self.circuit.state == CLOSED:
            return None
        return (f"object storage bucket {self._config.bucket} fails ({self.circuit.cause}): skipped "
                f"for {self.circuit.retry_in():.0f}s, then probed; blobs are served from the local "
                f"store and upstream, uploads retried when it answers")

    async def open(self) -> None:
        session = get_session()
        # payload signing off: the body is not read on the loop to sign it; its integrity is the
        # additional checksum's (a signed header the server checks against the bytes)
        self._client = await self._stack.enter_async_context(session.create_client(
            "s3", region_name=self._config.region, endpoint_url=self._config.endpoint_url,
            aws_access_key_id=self._config.access_key_id, aws_secret_access_key=self._config.secret_access_key,
            config=AioConfig(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2},
                             signature_version="s3v4",
                             s3={"addressing_style": "path", "payload_signing_enabled": False})))

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    def key(self, digest: Digest) -> str:
        return f"{self._config.prefix}blobs/{digest.algorithm}/{digest.hex}"

    @contextlib.asynccontextmanager
    async def locked(self, digest: Digest):
        """Hold this digest's lock: uploads, deletes and drops of one digest run in call order."""
        key = str(digest)
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key], self._locks[key]

    async def head(self, digest: Digest) -> StoredObject | None:
        """The object's size and whether it is verified, or None when the bucket has no such blob.
        Bounded by ``head_timeout``; a bucket the breaker holds open is Unavailable at once."""
        self._admit()
        outcome: bool | None = None  # None: cancelled, no outcome
        try:
            async with asyncio.timeout(self._config.head_timeout):
                answer = await self._client.head_object(Bucket=self._config.bucket, Key=self.key(digest),
                                                        ChecksumMode="ENABLED")
            outcome = True
        except ClientError as error:
            if _missing(error):
                outcome = True
                return None
            outcome = not _server_side(error)  # a 403 (no s3:ListBucket) is an answer, a 5xx is not
            raise self._unavailable("head", digest, error) from None
        except (BotoCoreError, OSError, asyncio.TimeoutError) as error:
            outcome = False
            raise self._unavailable("head", digest, error) from None
        finally:
            self._outcome(outcome)
        size = int(answer["ContentLength"])
        expected = whole_object_checksum(digest)
        checksum = answer.get("ChecksumSHA256") or ""
        # a multipart upload's ETag (S3, MinIO, Ceph RGW) and composite checksum end in "-<parts>"
        in_parts = "-" in checksum or "-" in str(answer.get("ETag", ""))
        return StoredObject(size, expected is not None and checksum == expected, in_parts=in_parts)

    def _admit(self) -> None:
        """Unavailable at once while the breaker skips the bucket (half-open: one probe goes)."""
        if not self.circuit.admit():
            raise Unavailable(f"object storage is skipped for {self.circuit.retry_in():.0f}s "
                              f"({self.circuit.cause})")

    def _outcome(self, answered: bool | None, read: bool = False) -> None:
        """Tell the breaker how a HEAD or a read went (None: it ended without an outcome,
        cancelled); see the module's rules."""
        if answered is None:
            self.circuit.abandoned()
        elif answered:
            if read:
                self._read_failed = False
            elif self._read_failed:
                self.circuit.abandoned()  # lookups answer, reads fail: a read must close it
                return
            if self.circuit.failures or self.circuit.state != CLOSED:
                self.answering.set()
            self.circuit.succeeded()
        else:
            self._read_failed = read
            if self.circuit.failed("reads fail" if read else "no answer"):
                self._read_failed = False  # opened: after the cool-down, any answer closes it
                log.warning("object storage failed %d times in a row: skipped for %.0fs",
                            self.circuit.failures, self._config.breaker_cooldown)

    async def stream(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) of a blob, in chunks as they arrive (Unavailable when it breaks,
        at once while the breaker skips the bucket). Each read is an outcome for the breaker."""
        self._admit()
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        outcome: bool | None = None  # None: cancelled or stopped by the reader
        came = False
        try:
            answer = await self._client.get_object(Bucket=self._config.bucket, Key=self.key(digest), **extra)
            async with answer["Body"] as body:
                while chunk := await body.read(_CHUNK):
                    came = True
                    yield chunk
            outcome = True
        except ClientError as error:
            outcome = not _server_side(error)  # a 404 (deleted meanwhile) is an answer, a 5xx is not
            raise self._unavailable("read", digest, error) from None
        except (BotoCoreError, OSError, asyncio.TimeoutError, aiohttp.ClientError, ValueError) as error:
            # aiohttp.ClientPayloadError: the body ended before its length (botocore does not wrap it)
            outcome = False
            raise self._unavailable("read", digest, error) from None
        finally:
            self._outcome(True if outcome is None and came else outcome, read=True)

    async def upload(self, path: Path, digest: Digest, size: int) -> None:
        """Copy a verified local blob to the bucket with its SHA-256 checksum: one PUT up to
        ``part_size``, else a multipart upload that is aborted on any failure. At most
        ``max_uploads`` run at once; each streams from the file."""
        async with self._uploads:
            if size <= self._config.part_size:
                await self._put(path, digest, size)
            else:
                await self._put_in_parts(path, digest, size)

    async def _put(self, path: Path, digest: Digest, size: int) -> None:
        checksum = whole_object_checksum(digest) or await asyncio.to_thread(_sha256_of, path, 0, size)
        with FileRegion(path, 0, size) as body:
            await self._client.put_object(Bucket=self._config.bucket, Key=self.key(digest), Body=body,
                                          ContentLength=size, ChecksumAlgorithm="SHA256",
                                          ChecksumSHA256=checksum)

    async def _put_in_parts(self, path: Path, digest: Digest, size: int) -> None:
        bucket, key, part_size = self._config.bucket, self.key(digest), self._config.part_size
        started = await self._client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
        upload_id = started["UploadId"]
        try:
            parts = []
            for number, offset in enumerate(range(0, size, part_size), start=1):
                length = min(part_size, size - offset)
                checksum = await asyncio.to_thread(_sha256_of, path, offset, length)
                with FileRegion(path, offset, length) as body:
                    answer = await self._client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                                            PartNumber=number, Body=body, ContentLength=length,
                                                            ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum)
                parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum})
            await self._client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._client.abort_multipart_upload(Bucket=bucket, Key=key,
                                                                         UploadId=upload_id))
            raise

    async def delete(self, digest: Digest) -> None:
        await self._client.delete_object(Bucket=self._config.bucket, Key=self.key(digest))

    async def drop(self, digest: Digest, why: str) -> None:
        """Delete an object that does not hold the blob (it failed verification), after any upload
        of the digest in flight; logged here, once per object."""
        log.warning("object storage: %s does not hold %s (%s): deleted", self.key(digest), digest, why,
                    extra={"digest": str(digest)})
        async with self.locked(digest):
            try:
                await self.delete(digest)
            except Exception as error:
                log.warning("object storage: delete of %s failed: %s", digest, type(error).__name__)

    async def presign(self, digest: Digest) -> str:
        """A URL that GETs the blob from the bucket for ``presign_seconds``, without credentials."""
        return await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self._config.bucket, "Key": self.key(digest)},
            ExpiresIn=self._config.presign_seconds)

    def _unavailable(self, what: str, digest: Digest, error: BaseException) -> Unavailable:
        log.warning("object storage %s of %s failed: %s", what, digest, type(error).__name__)
        return Unavailable(f"object storage could not {what} {digest}")


class BlobTier:
    """Keeps the bucket in step with the local store: blobs added are uploaded, blobs removed are
    deleted, both in app-owned background tasks (the hooks may be called from any thread), in
    call order per digest; uploads the bucket missed are tried again (the module's rules)."""

    def __init__(self, objects: ObjectStore, spawn, path_of: Callable[[Digest], Path]) -> None:
        self._objects = objects
        self._spawn = spawn          # BackgroundTasks.spawn
        self._path_of = path_of      # BlobStore.path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._missed: OrderedDict[Digest, int] = OrderedDict()  # uploads to try again, oldest first
        self._retrying = False  # a retry task runs (spawn's return value is not relied on)

    @property
    def missed(self) -> int:
        """Write-throughs the bucket missed, waiting for a retry."""
        return len(self._missed)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def added(self, digest: Digest, size: int) -> None:
        """A blob was verified into the local store: write it through."""
        self._call(self._upload, digest, size)

    def removed(self, digest: Digest) -> None:
        """A blob left the local store (gc, purge, delete; not eviction): delete it through."""
        self._call(self._delete, digest)

    def _call(self, action, *args) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None

        def spawn() -> None:
            # the coroutine takes the digest's lock as its first step: tasks start in spawn order,
            # and the lock is fair, so per digest the bucket sees the calls in the order made here
            self._spawn(action(*args), name=f"{action.__name__} {args[0]}")

        if running is loop:
            spawn()
        else:
            loop.call_soon_threadsafe(spawn)

    async def _upload(self, digest: Digest, size: int, retry: bool = False) -> bool:
        """Write one blob through; False when the bucket failed (the digest is remembered for a
        retry). A retry uploads only once the bucket answered its HEAD."""
        async with self._objects.locked(digest):
            if retry and not self._path_of(digest).exists():
                self._missed.pop(digest, None)  # evicted or removed meanwhile: nothing to upload
                return True
            try:
                try:
                    found = await self._objects.head(digest)
                except Unavailable:
                    if retry:
                        return False  # still down (or skipped): kept for the next pass
                    found = None  # a slow HEAD or an open breaker: upload (the PUT has bounds of its own)
                if found is not None and found.size == size and (found.verified or found.in_parts):
                    # the very bytes, vouched for by the server; or a multipart upload of this size,
                    # which no HEAD can vouch for (it is hashed whole whenever it is read): uploading
                    # it again would make another copy no HEAD can vouch for either
                    self._missed.pop(digest, None)
                    return True
                await self._objects.upload(self._path_of(digest), digest, size)
            except FileNotFoundError:
                self._missed.pop(digest, None)  # removed before it could be copied (its delete comes next)
                return True
            except Exception as error:
                log.warning("write-through of %s failed: %s", digest, type(error).__name__)
                self._remember(digest, size)
                return False
            self._missed.pop(digest, None)
            return True

    def _remember(self, digest: Digest, size: int) -> None:
        """Keep a missed upload for the retry pass (the newest MISSED_UPLOADS of them)."""
        self._missed[digest] = size
        self._missed.move_to_end(digest)
        if len(self._missed) > MISSED_UPLOADS:
            forgotten, _ = self._missed.popitem(last=False)
            log.warning("object storage: more than %d uploads missed; %s will not be retried",
                        MISSED_UPLOADS, forgotten)
        if not self._retrying:
            self._retrying = True
            self._spawn(self._retry_missed(), name="retry missed uploads")

    async def _retry_missed(self) -> None:
        """Upload again what the bucket missed: when it answers again, and every
        ``breaker_cooldown`` seconds, until none are left. A pass stops at the first failure."""
        answering = self._objects.answering
        try:
            while self._missed:
                answering.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(answering.wait(), self._objects.retry_seconds)
                if self._objects.circuit.state == OPEN:
                    continue  # skipped still: a probe goes after the cool-down
                for digest, size in list(self._missed.items()):
                    if digest in self._missed and not await self._upload(digest, size, retry=True):
                        break
        finally:
            self._retrying = False

    async def _delete(self, digest: Digest) -> None:
        self._missed.pop(digest, None)
        async with self._objects.locked(digest):
            try:
                await self._objects.delete(digest)
            except Exception as error:
                log.warning("delete-through of %s failed: %s", digest, type(error).__name__)


def write_and_delete_through(blobs, tier: BlobTier) -> None:
    """Put ``tier`` under ``blobs``: what the store adds is uploaded, what it removes (gc, purges,
    deletes) is deleted from the bucket. ``blobs.evict`` (the budget's) drops the local copy only.
    The server and ``wharf gc`` both wire the store this way, so they delete alike."""
    counted = blobs.on_added  # the budget's hook stays: wrapped, not replaced
    remove_locally = blobs.remove

    def added_through(digest: Digest, size: int) -> None:
        counted(digest, size)
        tier.added(digest, size)

    def remove_through(digest: Digest) -> int:
        freed = remove_locally(digest)
        if freed:
            tier.removed(digest)
        return freed

    blobs.on_added, blobs.remove = added_through, remove_through
