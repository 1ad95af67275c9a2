"""Blob bytes in S3-compatible object storage (AWS S3, MinIO, Ceph RGW), through aiobotocore.

Rules:
- a blob's key is ``<prefix>blobs/<algorithm>/<hex>``; an object under it is always complete and
  verified: only blobs already verified into the local store are uploaded, in one PUT, or in
  parts above ``part_size`` that become visible only when the upload completes; a failed
  multipart upload is aborted, so nothing half-written is left in the bucket;
- the object carries whether the blob is public (``x-amz-meta-wharf-public``), so a replica with
  an empty store may serve a public blob from the bucket without asking upstream;
- storage errors are ``Unavailable`` (503), never a traceback; a missing object is None;
- parts are read from disk in a thread and held one at a time (memory is bounded by ``part_size``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from proxy.config import S3Config
from proxy.errors import Unavailable
from proxy.oci.digest import Digest

log = logging.getLogger("wharf.objects")
_CHUNK = 1024 * 1024
_PUBLIC = "wharf-public"


@dataclass(frozen=True, slots=True)
class StoredObject:
    size: int
    public: bool


def _missing(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class ObjectStore:
    """A bucket (and prefix) holding verified blobs by digest; open at startup, close at shutdown."""

    def __init__(self, config: S3Config) -> None:
        self._config = config
        self._client = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def redirect(self) -> bool:
        return self._config.redirect

    async def open(self) -> None:
        session = get_session()
        self._client = await self._stack.enter_async_context(session.create_client(
            "s3", region_name=self._config.region, endpoint_url=self._config.endpoint_url,
            aws_access_key_id=self._config.access_key_id, aws_secret_access_key=self._config.secret_access_key,
            config=AioConfig(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2},
                             signature_version="s3v4", s3={"addressing_style": "path"})))

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    def key(self, digest: Digest) -> str:
        return f"{self._config.prefix}blobs/{digest.algorithm}/{digest.hex}"

    async def head(self, digest: Digest) -> StoredObject | None:
        """The object's size and visibility, or None when the bucket has no such blob."""
        try:
            answer = await self._client.head_object(Bucket=self._config.bucket, Key=self.key(digest))
        except ClientError as error:
            if _missing(error):
                return None
            raise self._unavailable("head", digest, error) from None
        except (BotoCoreError, OSError, asyncio.TimeoutError) as error:
            raise self._unavailable("head", digest, error) from None
        public = answer.get("Metadata", {}).get(_PUBLIC) == "1"
        return StoredObject(int(answer["ContentLength"]), public)

    async def stream(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) of a blob, in chunks as they arrive (Unavailable when it breaks)."""
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = await self._client.get_object(Bucket=self._config.bucket, Key=self.key(digest), **extra)
            async with answer["Body"] as body:
                while chunk := await body.read(_CHUNK):
                    yield chunk
        except ClientError as error:
            raise self._unavailable("read", digest, error) from None
        except (BotoCoreError, OSError, asyncio.TimeoutError) as error:
            raise self._unavailable("read", digest, error) from None

    async def upload(self, path: Path, digest: Digest, size: int, public: bool = False) -> None:
        """Copy a verified local blob to the bucket: one PUT up to ``part_size``, else a multipart
        upload that is aborted on any failure."""
        bucket, key, part_size = self._config.bucket, self.key(digest), self._config.part_size
        metadata = {_PUBLIC: "1" if public else "0"}
        with open(path, "rb") as source:
            if size <= part_size:
                body = await asyncio.to_thread(source.read)
                await self._client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
                return
            started = await self._client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata)
            upload_id = started["UploadId"]
            try:
                parts = []
                number = 1
                while part := await asyncio.to_thread(source.read, part_size):
                    answer = await self._client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                                            PartNumber=number, Body=part)
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                    number += 1
                await self._client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                             MultipartUpload={"Parts": parts})
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._client.abort_multipart_upload(Bucket=bucket, Key=key,
                                                                             UploadId=upload_id))
                raise

    async def delete(self, digest: Digest) -> None:
        await self._client.delete_object(Bucket=self._config.bucket, Key=self.key(digest))

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
    deleted, both in app-owned background tasks (the hooks may be called from any thread)."""

    def __init__(self, objects: ObjectStore, spawn, path_of, is_public) -> None:
        self._objects = objects
        self._spawn = spawn          # BackgroundTasks.spawn
        self._path_of = path_of      # BlobStore.path
        self._is_public = is_public  # digest -> bool, from the metadata's visibility
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def added(self, digest: Digest, size: int) -> None:
        """A blob was verified into the local store: write it through."""
        self._call(self._upload, digest, size)

    def removed(self, digest: Digest) -> None:
        """A blob left the local store (eviction, gc, delete): delete it through."""
        self._call(self._delete, digest)

    def _call(self, action, *args) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._spawn(action(*args), name=f"{action.__name__} {args[0]}")
        else:
            loop.call_soon_threadsafe(lambda: self._spawn(action(*args), name=f"{action.__name__} {args[0]}"))

    async def _upload(self, digest: Digest, size: int) -> None:
        try:
            if await self._objects.head(digest) is not None:
                return
            await self._objects.upload(self._path_of(digest), digest, size, public=self._is_public(digest))
        except FileNotFoundError:
            pass  # removed again before it could be copied
        except Exception as error:
            log.warning("write-through of %s failed: %s", digest, type(error).__name__)

    async def _delete(self, digest: Digest) -> None:
        try:
            await self._objects.delete(digest)
        except Exception as error:
            log.warning("delete-through of %s failed: %s", digest, type(error).__name__)
