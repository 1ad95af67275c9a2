"""``wharf mirror sync``: fetch what a mirror list names, through the normal pull-through path.

Rules:
- everything goes through the pull-through registry as a client's pull would, with the configured
  upstream credential (never a client's, so what a sync fetches is public): a tag still fresh is
  answered without asking upstream, a stale one is revalidated with HEAD and fetched with GET only
  when its digest moved; rate limits, circuit breakers and negative answers hold;
- one fetch per blob however many images and tags share it (a map per run; across processes, the
  fill lock), at most ``mirror.concurrency`` blobs and images at once;
- an image is recorded (exported, and with ``into: local`` kept: never evicted) only when every
  manifest and blob of the tags that succeeded is stored: ``MirrorRecords.adopt``; a failed tag is
  named in the outcome and left out;
- interrupted, a sync leaves complete blobs in the store and records nothing for the images it was
  on; run again, it fetches only what is still missing;
- one sync per list at a time across processes (``SyncBusy``);
- content that left the list (an image, a tag, ``into: local`` turned to ``cache``) is released:
  evictable again.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs

from proxy.config import Config
from proxy.errors import OCIError
from proxy.mirror.lists import ImageEntry, MirrorList
from proxy.mirror.records import MirroredImage, MirrorIncomplete, MirrorRecords
from proxy.mirror.status import SyncRun, SyncStatus
from proxy.oci.digest import Digest
from proxy.oci.media import INDEX_TYPES, MANIFEST_TYPES, parse_manifest
from proxy.oci.names import validate_tag
from proxy.registry.addressing import Addressing
from proxy.registry.base import Client, Registry, Target
from proxy.storage.blobs import BlobStore

_ACCEPT = sorted(MANIFEST_TYPES)
_CLIENT = Client()  # the configured upstream credential: what a sync fetches is public
_PROGRESS_EVERY = 0.2
_REFERRER_DEPTH = 3  # signatures of attestations of an image, no deeper
_ATTESTATION = "attestation-manifest"
_MAX_TAG_PAGES = 10_000  # pages of upstream's tag list a sync follows, at most
_HEARTBEAT_SECONDS = 10.0  # the status is rewritten at least this often while a sync runs (STALE_AFTER: 60)


class SyncBusy(Exception):
    """Another process syncs this list right now."""


class SyncObserver(Protocol):
    """What a progress display hears of a sync (every method is called on the event loop)."""

    def image_started(self, name: str) -> None: ...

    def image_finished(self, outcome: "ImageOutcome") -> None: ...

    def blob_found(self, size: int) -> None: ...

    def blob_progress(self, fetched: int) -> None: ...

    def blob_done(self, size: int, fetched: bool) -> None: ...


class SilentObserver:
    """Hears nothing (a scheduled sync); a display overrides what it shows."""

    def image_started(self, name: str) -> None:
        pass

    def image_finished(self, outcome: "ImageOutcome") -> None:
        pass

    def blob_found(self, size: int) -> None:
        pass

    def blob_progress(self, fetched: int) -> None:
        pass

    def blob_done(self, size: int, fetched: bool) -> None:
        pass


@dataclass(slots=True)
class ImageOutcome:
    name: str
    tags: list[str] = field(default_factory=list)            # tags recorded
    failed: dict[str, str] = field(default_factory=dict)     # tag (or "*": the image) -> why
    manifests: int = 0
    blobs: int = 0
    fetched_blobs: int = 0
    fetched_bytes: int = 0
    present_bytes: int = 0    # bytes that were in the store already
    unmirrored: int = 0       # child manifests left out (platforms)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(slots=True)
class SyncReport:
    list_name: str
    images: list[ImageOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[ImageOutcome]:
        return [image for image in self.images if not image.ok]


class _Blobs:
    """Blob fetches of one run: one per digest, at most ``slots`` at once."""

    def __init__(self, registry: Registry, store: BlobStore, fills, concurrency: int,
                 observer: SyncObserver) -> None:
        self._registry = registry
        self._store = store
        self._fills = fills
        self._slots = asyncio.Semaphore(concurrency)
        self._observer = observer
        self._running: dict[str, asyncio.Task[bool]] = {}

    async def have(self, target: Target, digest: Digest, size: int) -> bool:
        """Make sure the blob is stored; True for the one caller whose fetch brought it from upstream
        (the others sharing it in this run count it as already there)."""
        key = str(digest)
        task = self._running.get(key)
        first = task is None
        if task is None:
            self._observer.blob_found(size)
            task = self._running[key] = asyncio.ensure_future(self._fetch(target, digest, size))
        fetched = await asyncio.shield(task)
        return fetched and first

    async def _fetch(self, target: Target, digest: Digest, size: int) -> bool:
        async with self._slots:
            result = await self._registry.blob(target, digest, _CLIENT, head=False)
            if result.path is not None:
                self._observer.blob_done(size, False)
                return False
            fill = self._fills.get(digest)
            reported = 0
            while fill is not None and not fill.done.done():
                await asyncio.wait([fill.done], timeout=_PROGRESS_EVERY)
                written = getattr(fill.writer, "written", 0) or 0
                if written > reported:
                    self._observer.blob_progress(written - reported)
                    reported = written
            if fill is not None and fill.done.done() and fill.done.exception() is not None:
                raise fill.done.exception()  # type: ignore[misc]
            if self._store.size(digest) is None:
                raise OCIError(f"blob {digest} did not arrive")
            if size > reported:
                self._observer.blob_progress(size - reported)
            self._observer.blob_done(size, result.cache_status == "miss")
            return result.cache_status == "miss"


class MirrorSync:
    """Runs mirror lists against the store's upstreams."""

    def __init__(self, registry: Registry, addressing: Addressing, blobs: BlobStore, records: MirrorRecords,
                 status: SyncStatus, config: Config) -> None:
        self._registry = registry
        self._addressing = addressing
        self._blobs = blobs
        self._records = records
        self._status = status
        self._config = config

    async def sync(self, mirror_list: MirrorList, observer: SyncObserver | None = None) -> SyncReport:
        """Sync every image of ``mirror_list``; SyncBusy when another process syncs it."""
        lock = self._blobs.try_lock(self._lock_path(mirror_list.name))
        if lock is None:
            raise SyncBusy(f"a sync of mirror list {mirror_list.name!r} is running in another process")
        try:
            return await self._sync(mirror_list, observer or SilentObserver())
        finally:
            self._blobs.unlock(lock)

    def _lock_path(self, name: str) -> Path:
        return self._blobs.root / f"mirror-{name}.lock"

    async def _sync(self, mirror_list: MirrorList, observer: SyncObserver) -> SyncReport:
        started = time.monotonic()
        run = self._status.run(mirror_list.name, [image.name for image in mirror_list.images])
        fills = getattr(self._registry, "fills", None)  # a FillGroup is falsy when empty: no ``or``
        blobs = _Blobs(self._registry, self._blobs, fills if fills is not None else {},
                       self._config.mirror.concurrency, observer)
        images = asyncio.Semaphore(self._config.mirror.concurrency)
        report = SyncReport(mirror_list.name)

        kept = frozenset(entry.name for entry in mirror_list.images if entry.into == "local")

        async def one(entry: ImageEntry) -> ImageOutcome:
            async with images:
                return await self._image(mirror_list.name, entry, blobs, run, observer, kept)

        heartbeat = asyncio.ensure_future(self._heartbeat(run))  # a long blob must not look like a dead sync
        try:
            report.images = list(await asyncio.gather(*(one(entry) for entry in mirror_list.images)))
            self._forget_dropped(mirror_list, kept)
        finally:
            heartbeat.cancel()
            run.finish()
        report.seconds = time.monotonic() - started
        return report

    @staticmethod
    async def _heartbeat(run: SyncRun) -> None:
        while True:
            await asyncio.sleep(_HEARTBEAT_SECONDS)
            run.write(force=True)

    def _forget_dropped(self, mirror_list: MirrorList, kept: frozenset[str]) -> None:
        """Images no longer in the list: their content is released (evictable again) unless an
        image the list keeps (``kept``: its ``into: local`` names) needs it too."""
        wanted = {image.name for image in mirror_list.images}
        recorded = self._records.images(mirror_list.name)
        still_kept = set().union(*(image.content() for name, image in recorded.items() if name in kept))
        for name in recorded:
            if name not in wanted:
                self._records.forget_image(mirror_list.name, name, still_kept)

    # one image --------------------------------------------------------------------------------
    async def _image(self, holder: str, entry: ImageEntry, blobs: _Blobs, run: SyncRun,
                     observer: SyncObserver, kept: frozenset[str]) -> ImageOutcome:
        began = time.monotonic()
        outcome = ImageOutcome(entry.name)
        run.set_state(entry.name, "syncing")
        observer.image_started(entry.name)
        try:
            target = self._target(entry.name)
            image = MirroredImage(entry.name, target.upstream or "", target.repo)
            for tag in await self._tags(target, entry):
                try:
                    await self._tag(target, tag, entry, image, blobs, outcome, run)
                except OCIError as exc:
                    outcome.failed[tag] = exc.message
            if image.tags:
                image.synced_at = time.time()
                self._record(holder, entry, image, kept)
                outcome.tags = sorted(image.tags)
            elif not outcome.failed:
                outcome.failed["*"] = "no tag matched the filters"
        except (OCIError, MirrorIncomplete) as exc:
            outcome.failed["*"] = getattr(exc, "message", None) or str(exc)
        except Exception as exc:  # a bug or a broken store must not end the other images' syncs
            outcome.failed["*"] = f"internal error: {type(exc).__name__}: {str(exc)[:200]}"
        outcome.seconds = time.monotonic() - began
        run.image(entry.name).tags = outcome.tags
        run.image(entry.name).blobs = outcome.blobs
        run.set_state(entry.name, "synced" if outcome.ok else "failed",
                      None if outcome.ok else "; ".join(f"{k}: {v}" if k != "*" else v
                                                        for k, v in outcome.failed.items())[:1000])
        observer.image_finished(outcome)
        return outcome

    def _target(self, name: str) -> Target:
        if ":" in name.rpartition("/")[2] or "@" in name:
            raise OCIError(f"{name}: name the repository without a tag or digest; put tags under tags:")
        target = self._addressing.resolve(name, None)
        if target.upstream is None:
            raise OCIError(f"{name} is not on a configured upstream (its first component must be an "
                           f"upstream's name, e.g. docker.io/library/alpine)")
        if self._config.is_offline(target.upstream):
            raise OCIError(f"{target.upstream} is offline (offline: true): a sync cannot reach it; import a "
                           f"bundle instead (wharf mirror import)")
        return target

    async def _tags(self, target: Target, entry: ImageEntry) -> list[str]:
        """The tags to sync: the exact ones, and those of upstream's tag list the filters keep.

        Upstream's list is followed page by page until a page has no next one or names a page
        already read (a list that comes round again is done); a list longer than ``_MAX_TAG_PAGES``
        pages fails the image. What is no tag (not a string, not the tag grammar) is left out; an
        ``n`` that is no number is not passed on. The filters run in a thread: they grow with the
        list (semver sorting, the list's own regular expression)."""
        if not entry.needs_tag_list:
            return entry.select_tags()
        available: list[str] = []
        query: dict[str, str] = {}
        followed: set[str] = set()
        while True:
            size = query.get("n", "")
            page = await self._registry.tags(target, int(size) if size.isascii() and size.isdigit() else None,
                                             query.get("last"), _CLIENT)
            try:
                listed = json.loads(page.body).get("tags") or []
            except (ValueError, AttributeError):
                raise OCIError(f"{entry.name}: upstream's tag list is not JSON") from None
            if not isinstance(listed, list):
                raise OCIError(f"{entry.name}: upstream's tag list has no list of tags")
            available.extend(tag for tag in listed if _is_tag(tag))
            if not page.next_query or page.next_query in followed:
                break
            if len(followed) >= _MAX_TAG_PAGES:
                raise OCIError(f"{entry.name}: upstream's tag list goes on past {_MAX_TAG_PAGES} pages")
            followed.add(page.next_query)
            query = {k: v[0] for k, v in parse_qs(page.next_query).items()}
        return await asyncio.to_thread(entry.select_tags, available)

    async def _tag(self, target: Target, tag: str, entry: ImageEntry, image: MirroredImage, blobs: _Blobs,
                   outcome: ImageOutcome, run: SyncRun) -> None:
        result = await self._registry.manifest(target, tag, _ACCEPT, _CLIENT, head=False)
        if result.cache_status == "stale":
            raise OCIError("upstream could not be asked (rate limit, outage): the stored tag may be outdated")
        found = MirroredImage(image.name, image.upstream, image.repo)
        await self._manifest(target, result.digest, result.media_type, result.body, entry, found, blobs,
                             outcome, run, depth=0)
        missing = self._records.missing(found)
        if missing:
            raise OCIError(f"{len(missing)} manifest(s) or blob(s) did not arrive: {', '.join(missing[:3])}")
        image.tags[tag] = str(result.digest)
        image.manifests.update(found.manifests)
        image.blobs.update(found.blobs)
        for subject, descriptors in found.referrers.items():
            image.referrers.setdefault(subject, []).extend(
                d for d in descriptors if d not in image.referrers.get(subject, []))
        image.unmirrored.update(found.unmirrored)
        outcome.unmirrored = len(image.unmirrored)

    async def _manifest(self, target: Target, digest: Digest, media_type: str, body: bytes | None,
                        entry: ImageEntry, image: MirroredImage, blobs: _Blobs, outcome: ImageOutcome,
                        run: SyncRun, depth: int) -> None:
        """Collect a manifest and everything it needs (children of the chosen platforms, blobs, referrers)."""
        key = str(digest)
        if key in image.manifests:
            return
        if body is None:
            result = await self._registry.manifest(target, key, _ACCEPT, _CLIENT, head=False)
            body, media_type = result.body, result.media_type
            assert body is not None
        image.manifests[key] = media_type
        outcome.manifests += 1
        parsed = await asyncio.to_thread(parse_manifest, body, media_type) if len(body) > 65536 \
            else parse_manifest(body, media_type)
        if media_type in INDEX_TYPES:
            await self._children(target, digest, body, entry, image, blobs, outcome, run, depth)
        else:
            for descriptor in parsed.blobs:
                if descriptor.non_distributable:
                    continue  # foreign layers are fetched from their own URLs by clients
                fetched = await blobs.have(target, descriptor.digest, descriptor.size)
                image.blobs[str(descriptor.digest)] = descriptor.size
                outcome.blobs += 1
                if fetched:
                    outcome.fetched_blobs += 1
                    outcome.fetched_bytes += descriptor.size
                else:
                    outcome.present_bytes += descriptor.size
                run.add_bytes(entry.name, descriptor.size, descriptor.size if fetched else 0)
        if entry.referrers and depth < _REFERRER_DEPTH:
            await self._referrers(target, digest, entry, image, blobs, outcome, run, depth)

    async def _children(self, target: Target, index: Digest, body: bytes, entry: ImageEntry,
                        image: MirroredImage, blobs: _Blobs, outcome: ImageOutcome, run: SyncRun,
                        depth: int) -> None:
        """The children of an index the list wants; the others are noted as not mirrored."""
        children = (await asyncio.to_thread(json.loads, body) if len(body) > 65536 else json.loads(body)).get(
            "manifests") or []  # a big index is parsed off the loop, as parse_manifest was
        wanted = {c["digest"] for c in children if isinstance(c, dict) and entry.wants_platform(c.get("platform"))
                  and not _is_attestation(c)}
        for child in children:
            if not isinstance(child, dict) or not isinstance(child.get("digest"), str):
                continue
            digest = child["digest"]
            keep = digest in wanted or (entry.referrers and _is_attestation(child)
                                        and (child.get("annotations") or {}).get("vnd.docker.reference.digest") in wanted)
            if keep:
                await self._manifest(target, Digest.parse(digest), child.get("mediaType") or "", None, entry,
                                     image, blobs, outcome, run, depth)
            else:
                image.unmirrored[digest] = (f"{_platform_text(child)} of {index} was not mirrored "
                                            f"(the mirror list keeps {_platforms_text(entry)})")

    async def _referrers(self, target: Target, subject: Digest, entry: ImageEntry, image: MirroredImage,
                         blobs: _Blobs, outcome: ImageOutcome, run: SyncRun, depth: int) -> None:
        """Upstream's referrers of ``subject`` and what they need. What is no descriptor of another
        manifest (not an object, no valid digest, the subject itself) is left out: upstream's list
        is not checked as a manifest is."""
        answer = await self._registry.referrers(target, subject, None, _CLIENT)
        try:
            listed = (await asyncio.to_thread(json.loads, answer.body) if len(answer.body) > 65536
                      else json.loads(answer.body)).get("manifests") or []
        except (ValueError, AttributeError):
            return
        descriptors = [d for d in listed if isinstance(d, dict) and isinstance(d.get("digest"), str)
                       and d["digest"] != str(subject) and _is_digest(d["digest"])] if isinstance(listed, list) else []
        for descriptor in descriptors:
            await self._manifest(target, Digest.parse(descriptor["digest"]), descriptor.get("mediaType") or "",
                                 None, entry, image, blobs, outcome, run, depth + 1)
            listed = image.referrers.setdefault(str(subject), [])
            if descriptor not in listed:
                listed.append(descriptor)

    def _record(self, holder: str, entry: ImageEntry, image: MirroredImage, kept: frozenset[str]) -> None:
        """Adopt the image; what its previous record kept and this one does not is released, unless
        another image the list keeps (``kept``: its ``into: local`` names) needs it: images synced
        ``into: cache`` keep nothing, so they hold nothing back either."""
        previous = self._records.image(holder, image.name)
        keep = entry.into == "local"
        self._records.adopt(image, holder, keep=keep)
        dropped = previous.content() - (image.content() if keep else set()) if previous is not None else set()
        if dropped:  # the others are read only then: a list of thousands of images that did not change reads none
            others = set().union(*(i.content() for n, i in self._records.images(holder).items()
                                   if n != image.name and n in kept))
            self._records.release(holder, dropped - others)


def _is_tag(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        validate_tag(value)
    except OCIError:
        return False
    return True


def _is_digest(value: str) -> bool:
    try:
        Digest.parse(value)
    except OCIError:
        return False
    return True


def _is_attestation(child: dict) -> bool:
    return (child.get("annotations") or {}).get("vnd.docker.reference.type") == _ATTESTATION


def _platform_text(child: dict) -> str:
    platform = child.get("platform")
    if not isinstance(platform, dict):
        return "a child manifest with no platform"
    return "/".join(str(p) for p in (platform.get("os"), platform.get("architecture"), platform.get("variant")) if p)


def _platforms_text(entry: ImageEntry) -> str:
    return "all platforms" if entry.platforms == "all" else ", ".join(str(p) for p in entry.platforms)
