"""Single-flight upstream downloads that every concurrent requester streams as they grow.

Rules:
- at most one fill per digest runs in this process; later requesters join it ("coalesced");
- a fill is an app-owned task with its own time limit: a client hanging up never aborts it;
- readers follow the temporary file as it grows (Range included), so the first byte reaches
  every client before the fill completes;
- the blob enters the store only after its digest and size verify; if verification fails,
  every reader gets ``FillFailed`` and the handler aborts the connection instead of finishing it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from proxy.errors import OCIError, Unavailable
from proxy.oci.digest import Digest
from proxy.registry.tasks import BackgroundTasks
from proxy.storage.blobs import BlobWriter

log = logging.getLogger("wharf.fill")
_READ_CHUNK = 256 * 1024


class FillFailed(Exception):
    """The fill a reader was following did not complete with verified content."""


class Fill:
    """One download in progress: its writer, the size upstream announced, and its outcome."""

    def __init__(self, digest: Digest) -> None:
        self.digest = digest
        self.size: int | None = None
        self.writer: BlobWriter | None = None
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[Path] = loop.create_future()
        self.readers = 0

    def fail(self, exc: BaseException) -> None:
        if not self.started.done():
            self.started.set_exception(exc)
            self.started.exception()  # retrieved: joiners re-raise it themselves
        if not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) as they are written; raise FillFailed if the fill fails."""
        if self.done.done() and self.done.exception() is None:
            async for chunk in _read_complete(self.done.result(), start, end):
                yield chunk
            return
        writer = self.writer
        assert writer is not None, "read() before the fill started"
        try:
            fd = os.open(writer.temp_path, os.O_RDONLY)
        except FileNotFoundError:
            if self.done.done() and self.done.exception() is None:
                async for chunk in _read_complete(self.done.result(), start, end):
                    yield chunk
                return
            raise FillFailed(str(self.digest)) from None
        self.readers += 1
        try:
            position = start
            while end is None or position < end:
                available = writer.written - position
                if available > 0:
                    want = available if end is None else min(available, end - position)
                    data = os.pread(fd, min(want, _READ_CHUNK), position)
                    if not data:
                        raise FillFailed(f"{self.digest}: temporary file shrank")
                    position += len(data)
                    yield data
                    continue
                if self.done.done():
                    if self.done.exception() is not None:
                        raise FillFailed(str(self.digest))
                    break
                if writer.closed:
                    # bytes are all written; wait for the verdict (digest check, rename)
                    await asyncio.shield(asyncio.wait([self.done]))
                    continue
                await writer.wait_for(position)
            if end is None or position >= end:
                # do not report success before the digest verified
                if not self.done.done():
                    await asyncio.wait([self.done])
                if self.done.exception() is not None:
                    raise FillFailed(str(self.digest))
        finally:
            self.readers -= 1
            os.close(fd)


async def _read_complete(path: Path, start: int, end: int | None) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            data = f.read(_READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining))
            if not data:
                break
            if remaining is not None:
                remaining -= len(data)
            yield data


class FillGroup:
    """The app's running fills by digest, and the tasks that drive them."""

    def __init__(self, tasks: BackgroundTasks) -> None:
        self._fills: dict[str, Fill] = {}
        self._tasks = tasks

    def get(self, digest: Digest) -> Fill | None:
        return self._fills.get(str(digest))

    def __len__(self) -> int:
        return len(self._fills)

    def start(self, digest: Digest, run: Callable[[Fill], Awaitable[None]], timeout: float) -> Fill:
        """Start ``run(fill)`` as a tracked task under ``timeout``; the fill is failed if it raises."""
        fill = Fill(digest)
        key = str(digest)
        self._fills[key] = fill

        async def drive() -> None:
            try:
                async with asyncio.timeout(timeout):
                    await run(fill)
            except asyncio.TimeoutError:
                fill.fail(Unavailable(f"fill of {digest} exceeded {timeout:.0f}s"))
            except (OCIError, Exception) as exc:  # every waiter gets the same outcome
                if not isinstance(exc, OCIError):
                    log.exception("fill of %s failed", digest)
                fill.fail(exc)
            except asyncio.CancelledError:
                fill.fail(FillFailed("cancelled at shutdown"))
                raise
            finally:
                if self._fills.get(key) is fill:
                    del self._fills[key]

        self._tasks.spawn(drive(), name=f"fill {digest}")
        return fill
