"""The operator's hands on the cache: what it holds (list), dropping tags (purge), fetching ahead
(warm). ``wharf cache …`` and ``/api/cache/…`` both call this; neither checks access (the API
does, for server admins only; the CLI is the operator).

Purge rules:
- a purge selects cached upstream tags by reference (``name:tag`` or ``name@digest``: the tags of
  that repository naming the digest), by repository, or by upstream, optionally only those not
  pulled (nor cached, if never pulled) for ``older_than`` seconds;
- a tag whose manifest a mirror list or an import keeps is left alone (mirrored content is the
  mirror's), and so is everything local: pushed content is never a cached tag;
- a dropped tag's record goes from the metadata, its row from the index, its freshness from the
  shared cache, and every answer remembered for it (hot set, replayed answers) from this process
  at once and from the other processes of the store at their next poll (the invalidation stamp):
  its next pull asks upstream;
- then the manifests and blobs of the dropped tags are removed, unless something left still needs
  them: another cached tag (by the index's content rows), a local repository (pushed or linked), a
  mirror list or an import (kept); a blob being read right now stays (the budget evicts it
  later): whatever is in flight finishes;
- the store is read and written in a worker thread; the answers in memory are dropped on the loop.

Warm rules: a warm-up is a one-off mirror list (``WARM_LIST``) of the named tags synced
``into: cache`` by ``MirrorSync``: fetched as a pull would, public, evictable, never kept.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlencode

from pydantic import ValidationError

from proxy.config import validation_problems
from proxy.errors import OCIError
from proxy.mirror.lists import MirrorList
from proxy.mirror.sync import MirrorSync, SyncObserver, SyncReport
from proxy.oci.digest import Digest
from proxy.oci.names import validate_tag
from proxy.registry.addressing import Addressing
from proxy.registry.access import READ_PACKAGES, Principal
from proxy.registry.base import CatalogPage, Target
from proxy.registry.invalidation import Invalidation
from proxy.storage.blobs import BlobStore
from proxy.storage.cache_index import CacheIndex, CachedImage, image_content
from proxy.storage.meta import MetaStore
from proxy.storage.shared import SharedCache

WARM_LIST = "cache-warm"  # the mirror list a warm-up runs as (its status: /api/mirror/status)
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)?", re.ASCII)
_ONE_BY_ONE = 100  # a purge of more tags drops every remembered answer by name instead of one by one
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CacheRequestInvalid(Exception):
    """A selection or reference the cache cannot act on; the message says why (exit 2, 422)."""


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` or plain seconds, as seconds."""
    match = _DURATION_RE.fullmatch(str(text).strip())
    if not match:
        raise CacheRequestInvalid(f"{str(text)[:40]!r} is no duration: write e.g. 90s, 15m, 12h, 30d or 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True, slots=True)
class Reference:
    """A cached image by name as a client pulls it, and a tag or digest."""

    target: Target
    tag: str | None = None
    digest: str | None = None


@dataclass(slots=True)
class PurgeReport:
    dry_run: bool
    tags: list[CachedImage] = field(default_factory=list)          # dropped (or that would be)
    kept: list[CachedImage] = field(default_factory=list)          # left: a mirror list or an import keeps them
    removed: list[str] = field(default_factory=list)               # manifests and blobs removed (or that would be)
    freed_bytes: int = 0
    in_use: list[str] = field(default_factory=list)                # being read now: left for the budget
    still_needed: int = 0                                          # shared with what is left

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run,
                "tags": [{"name": t.name, "tag": t.tag, "digest": t.digest, "size": t.size} for t in self.tags],
                "kept": [{"name": t.name, "tag": t.tag, "digest": t.digest} for t in self.kept],
                "removed": len(self.removed), "freed_bytes": self.freed_bytes, "in_use": len(self.in_use),
                "still_needed": self.still_needed}


class CacheControl:
    """List, purge and warm the cache of one store (app key ``keys.CACHE_CONTROL``)."""

    def __init__(self, index: CacheIndex, blobs: BlobStore, meta: MetaStore, shared: SharedCache,
                 invalidation: Invalidation, addressing: Addressing, offline: frozenset[str],
                 upstream_names: frozenset[str], mirror_sync: Callable[[], MirrorSync]) -> None:
        self.index = index
        self._blobs = blobs
        self._meta = meta
        self._shared = shared
        self._invalidation = invalidation
        self._addressing = addressing
        self._offline = offline
        self._upstreams = upstream_names
        self._mirror_sync = mirror_sync

    # names ------------------------------------------------------------------------------------
    def repository(self, name: str) -> Target:
        """An upstream repository as a client names it (prefix, or the default upstream)."""
        try:
            target = self._addressing.resolve(name, None)
        except OCIError as exc:
            raise CacheRequestInvalid(f"{name[:200]!r}: {exc.message}") from None
        if target.upstream is None:
            example = sorted(self._upstreams)[0] if self._upstreams else "docker.io"
            raise CacheRequestInvalid(f"{name[:200]} is a local repository, not a cached one: name it with an "
                                      f"upstream's prefix, e.g. {example}/{name[:200]}")
        return target

    def reference(self, text: str, default_tag: str | None = None) -> Reference:
        """``name:tag`` or ``name@digest`` (``default_tag`` when neither is given, else an error)."""
        name, digest = text, None
        if "@" in text:
            name, _, digest = text.partition("@")
            try:
                parsed = Digest.parse(digest)
            except OCIError:
                raise CacheRequestInvalid(f"{text[:200]!r}: {digest[:100]!r} is no digest (sha256:<64 hex>)") from None
            return Reference(self.repository(name), digest=str(parsed))
        head, sep, tag = text.rpartition(":")
        if sep and "/" not in tag:
            name = head
        else:
            tag = default_tag
            if tag is None:
                raise CacheRequestInvalid(f"{text[:200]!r} names no tag: write NAME:TAG or NAME@DIGEST "
                                          f"(or --repo NAME for every tag)")
        try:
            validate_tag(tag)
        except OCIError as exc:
            raise CacheRequestInvalid(f"{text[:200]!r}: {exc.message}") from None
        return Reference(self.repository(name), tag=tag)

    def upstream(self, name: str) -> str:
        if name not in self._upstreams:
            known = ", ".join(sorted(self._upstreams)) or "none"
            raise CacheRequestInvalid(f"{name[:200]!r} is no configured upstream (configured: {known})")
        return name

    # list -------------------------------------------------------------------------------------
    async def repositories(self, upstream: str | None = None, repo: str | None = None, offset: int = 0,
                           limit: int | None = None):
        """What the cache holds, per repository (narrowed to an upstream or a repository; a page
        from ``offset`` of at most ``limit``): (the repositories, how many there are in all)."""
        name = self.repository(repo).scope if repo is not None else None
        if upstream is not None:
            self.upstream(upstream)
        await self.index.ready()
        await self.index.flush()  # what this process counted so far
        return (await self.index.repositories(upstream, name, offset, limit),
                await self.index.repository_count(upstream, name))

    # purge ------------------------------------------------------------------------------------
    async def select(self, ref: str | None = None, repo: str | None = None, upstream: str | None = None,
                     older_than: float | None = None) -> list[CachedImage]:
        """The cached tags a purge would consider: exactly one of ``ref``, ``repo``, ``upstream``."""
        chosen = [value for value in (ref, repo, upstream) if value is not None]
        if len(chosen) != 1:
            raise CacheRequestInvalid("name what to purge: exactly one of a reference (NAME:TAG or NAME@DIGEST), "
                                      "a repository or an upstream")
        if older_than is not None and older_than < 0:
            raise CacheRequestInvalid("older than a negative duration")
        await self.index.ready()
        await self.index.flush()  # this process's pulls count before anything is judged old
        if ref is not None:
            reference = self.reference(ref)
            images = await self.index.images(name=reference.target.scope, tag=reference.tag)
            if reference.digest is not None:
                images = [image for image in images if image.digest == reference.digest]
            elif not images:  # cached by another process since its last flush: the metadata knows it
                images = await asyncio.to_thread(self._unindexed, reference.target, reference.tag or "")
        elif repo is not None:
            images = await self.index.images(name=self.repository(repo).scope)
        else:
            images = await self.index.images(upstream=self.upstream(upstream or ""))
        if older_than is not None:
            cutoff = time.time() - older_than
            images = [image for image in images if max(image.last_pulled or 0.0, image.cached_at) < cutoff]
        return images

    def _unindexed(self, target: Target, tag: str) -> list[CachedImage]:
        record = self._meta.tag(target.scope, tag, fresh=True)
        if record is None:
            return []
        return [CachedImage(target.upstream or "", target.repo, tag, record.digest, record.size, 0, None,
                            record.public, record.media_type, record.checked_at)]

    async def purge(self, images: list[CachedImage], dry_run: bool = False) -> PurgeReport:
        """Drop these cached tags and what only they needed (see the module's rules)."""
        report = PurgeReport(dry_run)
        kept = await asyncio.to_thread(lambda: {image.digest for image in images if self._meta.is_kept(image.digest)})
        for image in images:
            (report.kept if image.digest in kept else report.tags).append(image)
        leaving = {(image.scope, image.tag) for image in report.tags}
        if not dry_run and leaving:
            await asyncio.to_thread(self._drop_records, leaving)
            for scope, tag in leaving:
                await self._shared.delete(f"fresh:{scope}:{tag}")
            self._forget_answers(leaving)  # this process at once, the other processes by the stamp
        removed_manifests = await asyncio.to_thread(self._sweep, leaving, report, dry_run)
        if not dry_run and removed_manifests:  # replayed answers by digest stop too
            scopes = {image.scope for image in report.tags}
            if len(removed_manifests) * len(scopes) <= _ONE_BY_ONE:
                self._forget_answers({(scope, digest) for digest in removed_manifests for scope in scopes})
            else:
                self._invalidation.names_changed()
        return report

    def _forget_answers(self, changed: set[tuple[str, str]]) -> None:
        """Every remembered answer for these (scope, tag or digest), one stamp for all; past
        ``_ONE_BY_ONE`` every answer remembered by name (cheap, and never wrong)."""
        if len(changed) <= _ONE_BY_ONE:
            self._invalidation.tags_changed(changed)
        else:
            self._invalidation.names_changed()

    def _drop_records(self, leaving: set[tuple[str, str]]) -> None:
        """The tags' records and index rows go (blocking)."""
        for scope, tag in leaving:
            self._meta.delete_tag(scope, tag)
        self.index.forget(leaving)

    def _sweep(self, leaving: set[tuple[str, str]], report: PurgeReport, dry_run: bool) -> list[str]:
        """Remove what only the leaving tags referenced (blocking: a worker thread). The manifests removed."""
        content = self._content_of(report)
        needed_by_incomplete = self._content_of_incomplete(leaving)
        manifests = []
        for digest, size in sorted(content.items()):
            if digest in needed_by_incomplete or self._still_needed(digest, leaving):
                report.still_needed += 1
                continue
            key = Digest.parse(digest)
            is_manifest = self._meta.manifest_type(digest) is not None
            if dry_run:
                if self._blobs.size(key) is not None:
                    report.removed.append(digest)
                    report.freed_bytes += size
                continue
            if self._blobs.is_being_read(key):
                report.in_use.append(digest)
                continue
            freed = self._blobs.remove(key)
            if not freed:
                if self._blobs.size(key) is not None:
                    report.in_use.append(digest)
                continue
            self._meta.forget(digest)
            self._meta.add_store_bytes("cached", -freed)
            report.removed.append(digest)
            report.freed_bytes += freed
            if is_manifest:
                manifests.append(digest)
        return manifests

    def _content_of(self, report: PurgeReport) -> dict[str, int]:
        """What the dropped tags reference in the store (their rows may be forgotten already)."""
        found: dict[str, int] = {}
        for image in report.tags:
            content, _ = image_content(self._blobs, self._meta, image.digest, image.media_type)
            found.update(content)
        return found

    def _content_of_incomplete(self, leaving: set[tuple[str, str]]) -> set[str]:
        """What the remaining tags whose content rows are incomplete reference, read from the store
        now (their rows cannot be trusted to name it; blocking)."""
        needed: set[str] = set()
        for scope, tag, digest, media_type in self.index.incomplete_tags():
            if (scope, tag) not in leaving:
                needed.update(image_content(self._blobs, self._meta, digest, media_type)[0])
        return needed

    def _still_needed(self, digest: str, leaving: set[tuple[str, str]]) -> bool:
        """Whether anything the purge leaves references ``digest`` (blocking)."""
        if self._meta.pushed_at(digest) is not None or self._meta.is_kept(digest):
            return True
        visibility = self._meta.visibility(digest, fresh=True)
        if any(scope.startswith("/") for scope in visibility.repos):
            return True  # linked into a local repository
        return self.index.referenced_by_others(digest, leaving)

    # warm -------------------------------------------------------------------------------------
    def warm_list(self, refs: list[str], platforms: list[str] | None = None) -> MirrorList:
        """The one-off mirror list of a warm-up: each repository once, with the tags named (default latest)."""
        if not refs:
            raise CacheRequestInvalid("name at least one image to warm (NAME[:TAG])")
        tags: dict[str, list[str]] = {}
        for text in refs:
            reference = self.reference(text, default_tag="latest")
            if reference.digest is not None:
                raise CacheRequestInvalid(f"{text[:200]!r}: warm names tags (NAME:TAG), not digests")
            if reference.target.upstream in self._offline:
                raise CacheRequestInvalid(f"{reference.target.upstream} is offline (offline: true): nothing can "
                                          f"be fetched from it")
            name = reference.target.scope
            if reference.tag not in tags.setdefault(name, []):
                tags[name].append(reference.tag or "latest")
        images = [{"name": name, "tags": sorted(found), "platforms": list(platforms) if platforms else "all",
                   "into": "cache"} for name, found in sorted(tags.items())]
        try:
            return MirrorList.model_validate({"name": WARM_LIST, "images": images})
        except ValidationError as exc:
            raise CacheRequestInvalid(validation_problems(exc)) from None

    async def warm(self, warm_list: MirrorList, observer: SyncObserver | None = None) -> SyncReport:
        """Fetch the list's images into the cache (SyncBusy when another warm-up runs)."""
        report = await self._mirror_sync().sync(warm_list, observer)
        await self.index.flush()
        return report


def warm_outcome(report: SyncReport) -> dict:
    """A warm-up's report as the API answers it."""
    return {"seconds": round(report.seconds, 3), "ok": not report.failed,
            "images": [{"name": outcome.name, "ok": outcome.ok, "tags": outcome.tags, "failed": outcome.failed,
                        "blobs": outcome.blobs, "fetched_blobs": outcome.fetched_blobs,
                        "fetched_bytes": outcome.fetched_bytes, "present_bytes": outcome.present_bytes}
                       for outcome in report.images]}


def may_list_cached(principal: Principal, pull_through: str) -> bool:
    """Who may see which upstream repositories are cached: whoever may pull through Wharf."""
    return pull_through == "anonymous" or (principal.signed_in and principal.may(READ_PACKAGES))


async def cached_catalog(index: CacheIndex, local: CatalogPage, principal: Principal, pull_through: str,
                         n: int | None, last: str | None) -> CatalogPage:
    """``_catalog``: a page of the local repositories the caller may read (``local``: the registry's
    page after ``last``) merged with the cached upstream repositories it may pull: those with a
    public tag (a tag learned with a client's own upstream credential is as private as that
    credential, and names no repository here), by their pull name ``<upstream>/<repo>``."""
    if not may_list_cached(principal, pull_through):
        return local
    cached = await index.public_names(last, None if n is None else n + 1)
    names = sorted(set(local.repositories) | set(cached))
    more = local.next_query is not None or (n is not None and len(cached) > n)
    if n is not None and len(names) > n:
        names, more = names[:n], True
    if more and names:
        return CatalogPage(names, urlencode({"n": n, "last": names[-1]}))
    return CatalogPage(names)
