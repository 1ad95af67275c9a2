"""Persistent metadata in diskcache (SQLite), with an in-memory front so hot reads skip SQLite.

What lives here is what must survive a restart: manifest media types by digest, tag
resolutions (for serving stale), who may see an object (public, or the repositories it was
confirmed in), and which blobs were pushed (never evicted). Short-lived shared facts (freshness,
authorization answers, negative answers) live in ``proxy.storage.shared``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any

import diskcache

_FRONT_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class TagRecord:
    """A tag's last known resolution and when upstream last confirmed it."""

    digest: str
    media_type: str
    size: int
    checked_at: float


@dataclass(slots=True)
class Visibility:
    """Who may be served an object: anyone (public) or clients confirmed for one of ``repos``."""

    public: bool = False
    repos: set[str] = field(default_factory=set)


class MetaStore:
    """Write-through key/value records over diskcache with a bounded in-memory read front."""

    def __init__(self, directory: Path) -> None:
        self._disk = diskcache.Cache(str(directory), eviction_policy="none", size_limit=2**40)
        self._front: dict[str, Any] = {}

    def close(self) -> None:
        self._disk.close()

    def _get(self, key: str) -> Any:
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
    def tag(self, scope: str, tag: str) -> TagRecord | None:
        raw = self._get(f"tag:{scope}:{tag}")
        return TagRecord(**raw) if raw else None

    def set_tag(self, scope: str, tag: str, record: TagRecord) -> None:
        self._set(f"tag:{scope}:{tag}", asdict(record))

    def delete_tag(self, scope: str, tag: str) -> None:
        self._delete(f"tag:{scope}:{tag}")

    # visibility ------------------------------------------------------------------------------
    def visibility(self, digest: str) -> Visibility:
        raw = self._get(f"vis:{digest}")
        if not raw:
            return Visibility()
        return Visibility(raw["public"], set(raw["repos"]))

    def grant(self, digest: str, scope: str, public: bool) -> None:
        """Record that ``digest`` was confirmed readable in ``scope`` (and by anyone if public)."""
        current = self.visibility(digest)
        if scope in current.repos and (current.public or not public):
            return
        current.repos.add(scope)
        current.public = current.public or public
        self._set(f"vis:{digest}", {"public": current.public, "repos": sorted(current.repos)})

    # pushed content --------------------------------------------------------------------------
    def is_pushed(self, digest: str) -> bool:
        return bool(self._get(f"pushed:{digest}"))

    def mark_pushed(self, digest: str) -> None:
        self._set(f"pushed:{digest}", True)

    # opaque documents (tag lists kept for stale serving) -------------------------------------
    def document(self, key: str) -> Any:
        return self._get(f"doc:{key}")

    def set_document(self, key: str, value: Any) -> None:
        self._set(f"doc:{key}", value)

    def forget(self, digest: str) -> None:
        """Drop what we know of an evicted object (its visibility must be re-learned)."""
        self._delete(f"vis:{digest}")
