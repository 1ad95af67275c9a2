"""Persistent metadata in diskcache (SQLite), with an in-memory front so hot reads skip SQLite.

What lives here is what must survive a restart: manifest media types by digest, tag
resolutions (for serving stale), who may see an object (public, or the repositories it was
confirmed in), and which blobs were pushed (never evicted). Short-lived shared facts (freshness,
authorization answers, negative answers) live in ``proxy.storage.shared``.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from proxy.storage.space import FullAwareCache

_FRONT_LIMIT = 100_000
# Local repositories change under every worker process at once (a push through one, a pull through
# another): their records are always read from disk, never from this process's front.
_LIVE_PREFIXES = ("tag:/", "doc:repo:", "doc:catalog", "doc:referrers:/")


@dataclass(frozen=True, slots=True)
class TagRecord:
    """A tag's last known resolution and when upstream last confirmed it.

    ``public``: upstream confirmed it without a client's credential, so anyone may see it; a tag
    learned with a client's credential is as private as its repository, whatever its digest.
    """

    digest: str
    media_type: str
    size: int
    checked_at: float
    public: bool = False


@dataclass(slots=True)
class Visibility:
    """Who may be served an object: anyone (public) or clients confirmed for one of ``repos``."""

    public: bool = False
    repos: set[str] = field(default_factory=set)


class MetaStore:
    """Write-through key/value records over diskcache with a bounded in-memory read front."""

    def __init__(self, directory: Path) -> None:
        self._disk = FullAwareCache(str(directory), eviction_policy="none", size_limit=2**40)  # full: StoreFull
        self._front: dict[str, Any] = {}
        self._tag_listeners: list[Callable[[str, str], None]] = []

    def subscribe_tags(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(scope, tag)`` after a tag's record is written or deleted (the cache index
        marks it; any thread; it must be quick and never raise)."""
        self._tag_listeners.append(listener)

    def close(self) -> None:
        self._disk.close()

    def release_thread(self) -> None:
        """Close the calling thread's connection (a thread that is about to end: its page cache and
        memory map of the metadata go with it, not at the next full garbage collection)."""
        self._disk.close()

    def _get(self, key: str) -> Any:
        if key.startswith(_LIVE_PREFIXES):
            return self._disk.get(key)
        try:
            return self._front[key]
        except KeyError:
            pass
        value = self._disk.get(key)
        if value is not None:
            if len(self._front) >= _FRONT_LIMIT:
                self._front.clear()
            self._front[key] = value
        return value

    def _set(self, key: str, value: Any) -> None:
        self._disk.set(key, value)
        if key.startswith(_LIVE_PREFIXES):
            return
        if len(self._front) >= _FRONT_LIMIT:
            self._front.clear()
        self._front[key] = value

    def _delete(self, key: str) -> None:
        self._front.pop(key, None)
        self._disk.delete(key)

    # manifests -------------------------------------------------------------------------------
    def manifest_type(self, digest: str) -> str | None:
        return self._get(f"mt:{digest}")

    def set_manifest_type(self, digest: str, media_type: str) -> None:
        if self._get(f"mt:{digest}") != media_type:
            self._set(f"mt:{digest}", media_type)

    # tags ------------------------------------------------------------------------------------
    def tag(self, scope: str, tag: str, fresh: bool = False) -> TagRecord | None:
        """A tag's record; ``fresh`` reads disk (another worker may just have updated it)."""
        key = f"tag:{scope}:{tag}"
        raw = self._get(key)
        if fresh:
            latest = self._disk.get(key)
            if latest != raw and latest is not None and not key.startswith(_LIVE_PREFIXES):
                self._front[key] = latest
            raw = latest
        return TagRecord(**raw) if raw else None

    def set_tag(self, scope: str, tag: str, record: TagRecord) -> None:
        self._set(f"tag:{scope}:{tag}", asdict(record))
        for listener in self._tag_listeners:
            listener(scope, tag)

    def delete_tag(self, scope: str, tag: str) -> None:
        self._delete(f"tag:{scope}:{tag}")
        for listener in self._tag_listeners:
            listener(scope, tag)

    def upstream_tags(self) -> Iterator[tuple[str, str]]:
        """Every (scope, tag) of an upstream repository with a record (blocking; reads the metadata
        in batches, in key order: memory stays flat)."""
        for key in self._disk.iterkeys():
            if not isinstance(key, str) or not key.startswith("tag:") or key.startswith("tag:/"):
                continue
            scope, _, tag = key[4:].rpartition(":")
            if scope:
                yield scope, tag

    # visibility ------------------------------------------------------------------------------
    def visibility(self, digest: str, fresh: bool = False) -> Visibility:
        """Who may see ``digest``; ``fresh`` reads disk (links another worker may just have changed)."""
        key = f"vis:{digest}"
        raw = self._get(key)
        if fresh:
            latest = self._disk.get(key)
            if latest is not None and latest != raw:
                self._front[key] = latest
            raw = latest
        if not raw:
            return Visibility()
        return Visibility(raw["public"], set(raw["repos"]))

    def grant(self, digest: str, scope: str, public: bool) -> None:
        """Record that ``digest`` was confirmed readable in ``scope`` (and by anyone if public)."""
        current = self.visibility(digest)
        if scope in current.repos and (current.public or not public):
            return
        with self._disk.transact():  # read-modify-write against other workers
            current = self.visibility(digest, fresh=True)
            current.repos.add(scope)
            current.public = current.public or public
            self._set(f"vis:{digest}", {"public": current.public, "repos": sorted(current.repos)})

    def revoke(self, digest: str, scope: str) -> None:
        """Unlink ``digest`` from ``scope`` (a deleted blob or manifest); the rest stays."""
        with self._disk.transact():
            current = self.visibility(digest, fresh=True)
            if scope not in current.repos:
                self._front.pop(f"vis:{digest}", None)
                return
            current.repos.discard(scope)
            if current.repos or current.public:
                self._set(f"vis:{digest}", {"public": current.public, "repos": sorted(current.repos)})
            else:
                self._delete(f"vis:{digest}")

    # pushed content --------------------------------------------------------------------------
    def is_pushed(self, digest: str) -> bool:
        return bool(self._get(f"pushed:{digest}"))

    def mark_pushed(self, digest: str) -> None:
        """Pushed content is never evicted; the value is when it was last linked (for gc's grace)."""
        self._set(f"pushed:{digest}", time.time())

    def pushed_at(self, digest: str) -> float | None:
        """When ``digest`` was last pushed or linked, read from disk (another process may have linked it)."""
        value = self._disk.get(f"pushed:{digest}")
        if value is None:
            return None
        return 0.0 if value is True else float(value)

    def unmark_pushed(self, digest: str) -> None:
        self._delete(f"pushed:{digest}")

    # mirrored content (``proxy.mirror.records``) -------------------------------------------------
    def keep(self, digest: str, holder: str) -> bool:
        """``holder`` (a mirror list, or an import) keeps ``digest``: never evicted while one holds it.
        True when nobody kept it before."""
        with self._disk.transact():
            holders = list(self._disk.get(f"kept:{digest}") or [])
            if holder in holders:
                return False
            self._disk.set(f"kept:{digest}", sorted(holders + [holder]))
            return not holders

    def release(self, digest: str, holder: str) -> bool:
        """``holder`` no longer keeps ``digest``; True when nobody keeps it any more."""
        with self._disk.transact():
            holders = list(self._disk.get(f"kept:{digest}") or [])
            if holder not in holders:
                return False
            holders.remove(holder)
            if holders:
                self._disk.set(f"kept:{digest}", holders)
            else:
                self._disk.delete(f"kept:{digest}")
            return not holders

    def is_kept(self, digest: str) -> bool:
        """Read from disk: another process (a sync, an import) may have kept it just now."""
        return bool(self._disk.get(f"kept:{digest}"))

    def keepers(self, digest: str) -> list[str]:
        return list(self._disk.get(f"kept:{digest}") or [])

    def set_unmirrored(self, digest: str, note: str) -> None:
        """A child manifest of a mirrored index that was left out (a platform subset), and why."""
        self._disk.set(f"unmirrored:{digest}", note)

    def unmirrored(self, digest: str) -> str | None:
        return self._disk.get(f"unmirrored:{digest}")

    def clear_unmirrored(self, digest: str) -> None:
        self._disk.delete(f"unmirrored:{digest}")

    # store totals (shared by every worker process) --------------------------------------------
    def add_store_bytes(self, kind: str, delta: int) -> int:
        """Atomically add ``delta`` to the store's ``kind`` total (cached, pushed, kept); the new total."""
        return int(self._disk.incr(f"store-bytes:{kind}", delta, default=0))

    def set_store_bytes(self, kind: str, total: int) -> None:
        self._disk.set(f"store-bytes:{kind}", total)

    def store_bytes(self, kind: str) -> int:
        return int(self._disk.get(f"store-bytes:{kind}", 0))

    # local repositories ----------------------------------------------------------------------
    # ``repo:<name>`` -> {"tags": [sorted tags], "manifests": [sorted digests]}; ``catalog`` -> sorted
    # names; ``referrers:/<name>:<subject>`` -> descriptors of the manifests naming that subject.
    def repo(self, name: str) -> dict | None:
        return self.document(f"repo:{name}")

    def catalog(self) -> list[str]:
        return list(self.document("catalog") or [])

    def ensure_repo(self, name: str) -> dict:
        """The repository's index, created (and listed in the catalog) on first use."""
        record = self.repo(name)
        if record is not None:
            return record
        with self._disk.transact():  # read-modify-write against other workers
            record = self.repo(name)
            if record is None:
                record = {"tags": [], "manifests": []}
                self.set_document(f"repo:{name}", record)
                names = self.catalog()
                if name not in names:
                    bisect.insort(names, name)
                    self.set_document("catalog", names)
        return record

    def _update_repo_list(self, name: str, key: str, value: str, present: bool) -> None:
        with self._disk.transact():
            record = dict(self.ensure_repo(name))
            items = list(record.get(key, []))
            index = bisect.bisect_left(items, value)
            found = index < len(items) and items[index] == value
            if present and not found:
                items.insert(index, value)
            elif not present and found:
                del items[index]
            else:
                return
            record[key] = items
            self.set_document(f"repo:{name}", record)

    def add_repo_manifest(self, name: str, digest: str) -> None:
        self._update_repo_list(name, "manifests", digest, True)

    def remove_repo_manifest(self, name: str, digest: str) -> None:
        self._update_repo_list(name, "manifests", digest, False)

    def add_repo_tag(self, name: str, tag: str) -> None:
        self._update_repo_list(name, "tags", tag, True)

    def remove_repo_tag(self, name: str, tag: str) -> None:
        self._update_repo_list(name, "tags", tag, False)

    def add_referrer(self, scope: str, subject: str, descriptor: dict) -> None:
        key = f"referrers:{scope}:{subject}"
        with self._disk.transact():
            found = [d for d in self.document(key) or [] if d.get("digest") != descriptor["digest"]]
            found.append(descriptor)
            self.set_document(key, found)

    def remove_referrer(self, scope: str, subject: str, digest: str) -> None:
        key = f"referrers:{scope}:{subject}"
        with self._disk.transact():
            found = self.document(key) or []
            kept = [d for d in found if d.get("digest") != digest]
            if len(kept) != len(found):
                self.set_document(key, kept)

    # opaque documents (tag lists kept for stale serving) -------------------------------------
    def document(self, key: str, fresh: bool = False) -> Any:
        """A stored document; ``fresh`` reads disk (another process may just have written it)."""
        if fresh:
            value = self._disk.get(f"doc:{key}")
            if value is not None and not f"doc:{key}".startswith(_LIVE_PREFIXES):
                self._front[f"doc:{key}"] = value
            return value
        return self._get(f"doc:{key}")

    def set_document(self, key: str, value: Any) -> None:
        self._set(f"doc:{key}", value)

    def delete_document(self, key: str) -> None:
        self._delete(f"doc:{key}")

    def forget(self, digest: str) -> None:
        """Drop what we know of an evicted object (its visibility must be re-learned)."""
        self._delete(f"vis:{digest}")
