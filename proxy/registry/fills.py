"""Single-flight upstream downloads that every concurrent requester streams as they grow.

Rules:
- at most one fill per digest runs on a storage root, across worker processes: the process
  holding the digest's flock leads (downloads); the others follow its temporary file;
- within a process, later requesters join the running fill ("coalesced");
- a fill is an app-owned task with its own time limit: a client hanging up never aborts it;
- readers follow the temporary file as it grows (Range included), so the first byte reaches
  every client before the fill completes;
- the blob enters the store only after its digest and size verify; if verification fails,
  every reader gets ``FillFailed`` and the handler aborts the connection instead of finishing it;
- a leader that dies mid-fill (killed, its host gone) frees its flock: the first follower to take
  the lock leads from then on (takeover). It downloads afresh into a new temporary file at the same
  name; readers finish what the dead leader's file holds, then go on in the new one, so they never
  see an error for it. The new leader's download is verified like any other before commit;
- the leader writes what the fill is for (upstream, repository, whether it was asked without a
  client's credential) next to its temporary file, so every worker of the store can list the
  fills in flight with their progress (``in_flight``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from proxy.errors import OCIError, StoreFull, Unavailable
from proxy.oci.digest import Digest
from proxy.registry.tasks import BackgroundTasks
from proxy.storage.blobs import BlobStore, Growth, held_by_a_process

log = logging.getLogger("wharf.fill")
_POLL = 0.005
_BATCH_WAIT = 0.05
_ABOUT = ".about"
_FAILED = ".failed"  # a leader whose fill failed says so here before its lock comes free
_FAILED_NOTE_SECONDS = 0.5


class FillFailed(Exception):
    """The fill a reader was following did not complete with verified content."""


class RemoteProgress(Growth):
    """How far another process's fill has written, learned by watching its temporary file.

    ``inode`` is the file it describes; ``superseded`` says another leader took the fill over (a
    new file), which wakes its waiters without pretending the fill ended.
    """

    def __init__(self, temp_path: Path) -> None:
        super().__init__(temp_path)
        self.inode: int | None = None
        self.superseded = False

    def advance(self, size: int) -> None:
        if size > self.written:
            self.written = size
            self._notify()

    def close(self) -> None:
        self.closed = True
        self._notify()

    def supersede(self) -> None:
        self.superseded = True
        self._notify()

    async def wait_for(self, offset: int) -> None:
        while self.written <= offset and not self.closed and not self.superseded:
            await self._grown.wait()


class Fill:
    """One download in progress: how far it got, the size upstream announced, and its outcome."""

    def __init__(self, digest: Digest) -> None:
        self.digest = digest
        self.size: int | None = None
        self.writer = None  # a BlobWriter (we lead) or a RemoteProgress (another process leads)
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[Path] = loop.create_future()

    def begin(self, progress, size: int | None) -> None:
        self.writer, self.size = progress, size
        if not self.started.done():
            self.started.set_result(None)

    def finish(self, path: Path) -> None:
        if not self.started.done():
            self.started.set_result(None)
        if not self.done.done():
            self.done.set_result(path)

    def fail(self, exc: BaseException) -> None:
        if not self.started.done():
            self.started.set_exception(exc)
            self.started.exception()  # retrieved: joiners re-raise it themselves
        if not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()

    def _complete_path(self) -> Path | None:
        if self.done.done() and self.done.exception() is None:
            return self.done.result()
        return None

    async def segments(self, start: int = 0, end: int | None = None,
                       batch: int = 0) -> AsyncIterator[tuple[int, int, int]]:
        """Yield (fd, offset, count) regions of [start, end) as they are written.

        After the first region (sent at once, for the first byte), regions wait up to
        ``_BATCH_WAIT`` for ``batch`` bytes, so a consumer that pays per region (a thread hop
        for sendfile) is not called for every small write. The region that completes the range
        is held back until the digest verified; a failed fill raises FillFailed.
        """
        complete = self._complete_path()
        fd = None
        if complete is None:
            try:
                fd = os.open(self.writer.temp_path, os.O_RDONLY)
            except (FileNotFoundError, AttributeError):
                await asyncio.wait([self.done])  # renamed already (or gone): the verdict decides
                complete = self._complete_path()
                if complete is None:
                    raise FillFailed(str(self.digest)) from self.done.exception()
        if complete is not None:
            fd = os.open(complete, os.O_RDONLY)
            try:
                stop = os.fstat(fd).st_size if end is None else end
                if stop > start:
                    yield fd, start, stop - start
            finally:
                os.close(fd)
            return
        progress = self.writer
        opened_for = progress  # the writer whose file ``fd`` is; a takeover brings another
        try:
            position = start
            first = True
            while end is None or position < end:
                progress = self.writer
                trusted = progress is opened_for and not isinstance(progress, RemoteProgress)
                available = progress.written - position if trusted else self._held(fd, position)
                if available > 0 and not first and available < batch and not progress.closed \
                        and (end is None or position + available < end):
                    try:
                        await asyncio.wait_for(progress.wait_for(position + batch - 1), _BATCH_WAIT)
                    except asyncio.TimeoutError:
                        pass
                    available = progress.written - position if trusted else self._held(fd, position)
                if available > 0:
                    count = available if end is None else min(available, end - position)
                    if end is not None and position + count >= end:
                        await self._verified()
                    yield fd, position, count
                    position += count
                    first = False
                    continue
                if not trusted:
                    moved = self._reopen(fd)
                    if moved is not None:  # our file was replaced (takeover) or committed: read on in the new one
                        os.close(fd)
                        fd, opened_for = moved, self.writer
                        continue
                if self.done.done() or progress.closed:
                    if not trusted:  # what our file lacks is in the committed blob, once it verified
                        await self._verified()
                        moved = self._reopen(fd)
                        if moved is not None:
                            os.close(fd)
                            fd, opened_for = moved, self.writer
                            continue
                    break
                if trusted or progress.written <= position and not getattr(progress, "superseded", False):
                    await progress.wait_for(position)
                else:
                    await asyncio.sleep(_POLL)  # the file lags what the fill reports, or changes hands
            await self._verified()  # never report success before the digest verified
        finally:
            os.close(fd)

    @staticmethod
    def _held(fd: int, position: int) -> int:
        """Bytes after ``position`` in ``fd``'s file, when another process writes it (or wrote it and
        died): the file itself says, and its bytes are the blob's whichever leader wrote them."""
        return os.fstat(fd).st_size - position

    def _reopen(self, fd: int) -> int | None:
        """A descriptor of the fill's current file when it is not ``fd``'s (None: it is, or there is none)."""
        current = self._complete_path() or getattr(self.writer, "temp_path", None)
        if current is None:
            return None
        try:
            new = os.open(current, os.O_RDONLY)
        except FileNotFoundError:
            return None
        if os.fstat(new).st_ino == os.fstat(fd).st_ino:
            os.close(new)
            return None
        return new

    async def _verified(self) -> None:
        """Wait for the fill's verdict; raise FillFailed unless its content verified."""
        await asyncio.wait([self.done])
        if self.done.exception() is not None:
            raise FillFailed(str(self.digest)) from self.done.exception()  # the cause, for the log


class FillGroup:
    """The process's running fills by digest, led here or followed from another worker."""

    def __init__(self, tasks: BackgroundTasks, blobs: BlobStore) -> None:
        self._fills: dict[str, Fill] = {}
        self._tasks = tasks
        self._blobs = blobs

    def get(self, digest: Digest) -> Fill | None:
        return self._fills.get(str(digest))

    def __len__(self) -> int:
        return len(self._fills)

    def start(self, digest: Digest, run: Callable[[Fill, Path, Path], Awaitable[None]], timeout: float,
              about: Mapping[str, Any] | None = None) -> Fill:
        """Lead the fill with ``run(fill, temp_path, size_path)`` if no process does; else follow it.

        ``about`` (JSON-able: upstream, repository, public) is published while we lead it.
        Must be called with no await between ``get()`` returning None and this call.
        """
        fill = Fill(digest)
        key = str(digest)
        self._fills[key] = fill
        temp_path, size_path, lock_path = self._blobs.fill_paths(digest)
        lock = self._blobs.try_lock(lock_path)
        about_path = temp_path.with_suffix(_ABOUT)

        async def lead(lock: int) -> None:
            about_fd = None
            try:
                final = self._blobs.path(digest)
                if final.exists():  # another worker finished it between our look and our lock
                    fill.finish(final)
                    return
                # a dead leader's file: its readers keep their descriptors, ours is a new file
                temp_path.unlink(missing_ok=True)
                size_path.unlink(missing_ok=True)
                if about is not None:
                    about_fd = _publish(about_path, {**about, "digest": key, "started_at": time.time()})
                try:
                    await run(fill, temp_path, size_path)
                except StoreFull:
                    raise  # every process meets the same full disk: there is nothing to note
                except Exception:
                    # before the lock comes free: a follower must not take a failed fill for a dead
                    # leader's (its readers would go on with bytes that never verified)
                    with contextlib.suppress(OSError):
                        temp_path.with_suffix(_FAILED).write_text(key)
                    raise
            finally:
                if about_fd is not None:
                    about_path.unlink(missing_ok=True)
                    os.close(about_fd)
                size_path.unlink(missing_ok=True)
                lock_path.unlink(missing_ok=True)  # before unlocking: a newcomer makes a fresh one
                self._blobs.unlock(lock)
                failed_note = temp_path.with_suffix(_FAILED)
                if failed_note.exists():  # followers poll every _POLL: the note only has to outlive that
                    asyncio.get_running_loop().call_later(_FAILED_NOTE_SECONDS, failed_note.unlink, True)

        work = lead(lock) if lock is not None else self._follow(fill, temp_path, size_path, lock_path, lead)
        began = time.perf_counter()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("fill of %s started (%s)", digest, "leading" if lock is not None else "following another worker",
                      extra={"digest": key, "leads": lock is not None})

        async def drive() -> None:
            try:
                async with asyncio.timeout(timeout):
                    await work
            except asyncio.TimeoutError:
                fill.fail(Unavailable(f"fill of {digest} exceeded {timeout:.0f}s"))
            except asyncio.CancelledError:
                fill.fail(FillFailed("cancelled at shutdown"))
                raise
            except Exception as exc:  # every waiter gets the same outcome
                if not isinstance(exc, OCIError):
                    log.exception("fill of %s failed", digest)
                fill.fail(exc)
            finally:
                if self._fills.get(key) is fill:
                    del self._fills[key]
                if isinstance(fill.writer, RemoteProgress):
                    fill.writer.close()
                if log.isEnabledFor(logging.DEBUG):
                    self._log_finished(fill, began)

        self._tasks.spawn(drive(), name=f"fill {digest}")
        return fill

    def watch(self, digest: Digest, timeout: float) -> Fill:
        """Follow the fill another worker process of this store leads, for another replica, without
        ever leading it: when that leader dies, the watch fails (the replica that asked claims the
        blob again) and nothing is noted for this store's own followers, who take over as ever."""
        fill = Fill(digest)
        temp_path, size_path, lock_path = self._blobs.fill_paths(digest)

        async def step_back(lock: int) -> None:
            self._blobs.unlock(lock)
            final = self._blobs.path(digest)
            if final.exists():  # the leader finished as it let go
                fill.finish(final)
                return
            raise Unavailable(f"the fill of {digest} this replica followed stopped")

        async def drive() -> None:
            try:
                async with asyncio.timeout(timeout):
                    await self._follow(fill, temp_path, size_path, lock_path, step_back, quiet=True)
            except asyncio.CancelledError:
                fill.fail(FillFailed("cancelled at shutdown"))
                raise
            except Exception as exc:
                fill.fail(exc if isinstance(exc, OCIError) else Unavailable(f"following the fill of {digest} failed"))
            finally:
                if isinstance(fill.writer, RemoteProgress):
                    fill.writer.close()

        self._tasks.spawn(drive(), name=f"watch {digest}")
        return fill

    @staticmethod
    def _log_finished(fill: Fill, began: float) -> None:
        failure = fill.done.exception() if fill.done.done() else None
        outcome = "stored" if fill.done.done() and failure is None else f"failed: {failure}"
        log.debug("fill of %s finished: %s", fill.digest, outcome,
                  extra={"digest": str(fill.digest), "outcome": outcome, "size": fill.size,
                         "bytes": getattr(fill.writer, "written", None),
                         "duration_ms": round((time.perf_counter() - began) * 1000, 3)})

    async def _follow(self, fill: Fill, temp_path: Path, size_path: Path, lock_path: Path,
                      lead: Callable[[int], Awaitable[None]], quiet: bool = False) -> None:
        """Follow another process's fill of the same digest until its blob is committed; when its
        leader dies, take the fill over (``lead`` it here) if no other follower did first."""
        final = self._blobs.path(fill.digest)
        progress = RemoteProgress(temp_path)
        following_since = time.time() - 1  # a failure noted from then on is the leader's we follow
        while not fill.started.done():
            if final.exists():
                fill.finish(final)
                return
            try:
                announced = int(size_path.read_text() or "-1")
            except (FileNotFoundError, ValueError):
                announced = None
            if announced is not None and _has_bytes(temp_path):
                fill.begin(progress, announced if announced >= 0 else None)
                break
            lock = self._blobs.try_lock(lock_path)
            if lock is not None:  # the leader died before upstream answered: lead it here
                await self._take_over(fill, lead, lock, following_since, quiet)
                return
            await asyncio.sleep(_POLL)
        while True:
            try:
                found = os.stat(temp_path)
            except FileNotFoundError:
                found = None
            if found is not None:
                if progress.inode is None:
                    progress.inode = found.st_ino
                if found.st_ino != progress.inode:  # another follower took the fill over: a new file
                    progress.supersede()
                    progress = RemoteProgress(temp_path)
                    progress.inode = found.st_ino
                    fill.begin(progress, fill.size)
                progress.advance(found.st_size)
            if final.exists():
                progress.advance(final.stat().st_size)
                fill.finish(final)
                return
            lock = self._blobs.try_lock(lock_path)
            if lock is not None:
                progress.supersede()
                await self._take_over(fill, lead, lock, following_since, quiet)
                return
            await asyncio.sleep(_POLL)

    async def _take_over(self, fill: Fill, lead: Callable[[int], Awaitable[None]], lock: int,
                         following_since: float, quiet: bool = False) -> None:
        """Lead a fill whose leader is gone (its flock came free): the readers here go on in our file.
        A leader that failed (its download did not verify, upstream refused) noted it before it let
        go: then every reader here fails as the leader's did, and nobody downloads it again now."""
        temp_path, _, _ = self._blobs.fill_paths(fill.digest)
        try:
            failed = temp_path.with_suffix(_FAILED).stat().st_mtime >= following_since
        except FileNotFoundError:
            failed = False
        if failed and not self._blobs.path(fill.digest).exists():
            self._blobs.unlock(lock)
            raise Unavailable(f"the fill of {fill.digest} failed in another process; try again")
        if not quiet and not self._blobs.path(fill.digest).exists():
            log.warning("the process filling %s is gone; this one takes the fill over", fill.digest,
                        extra={"digest": str(fill.digest)})
        await lead(lock)

    def in_flight(self) -> list[dict]:
        """The fills led by any process of the store now: what each is for, bytes so far, and the size
        upstream announced (None until it answers, or when it named none). Lists the store's
        temporary directory: call it off the event loop."""
        found = []
        for about_path in self._blobs.tmp_dir.glob(f"fill-*{_ABOUT}"):
            try:
                about = json.loads(about_path.read_text())
            except (OSError, ValueError):
                continue  # finished meanwhile, or half written
            if not isinstance(about, dict) or not held_by_a_process(about_path):
                continue  # not ours, or left by a process that died (the tmp clean-up removes it)
            part = about_path.with_suffix(".part")
            try:
                written = part.stat().st_size
            except FileNotFoundError:
                written = 0
            try:
                announced: int | None = int(about_path.with_suffix(".size").read_text() or "-1")
            except (FileNotFoundError, ValueError):
                announced = None
            found.append({**about, "bytes": written,
                          "size": announced if announced is not None and announced >= 0 else None})
        return sorted(found, key=lambda fill: fill.get("started_at", 0))

def _has_bytes(path: Path) -> bool:
    """Whether the leader's file holds body bytes: only then do followers begin, for by then the
    leader has recorded who may see the blob (a follower that began sooner would ask upstream)."""
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _publish(path: Path, about: dict) -> int | None:
    """Write ``about`` to ``path`` and hold a flock on it while the fill runs (the fd holds it):
    readers tell a live fill's file from a dead process's, and the tmp clean-up spares it. A
    failure (disk full) only leaves the fill unlisted: None."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps(about).encode())
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        return None
    return fd
