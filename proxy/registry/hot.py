"""The in-memory hot set: manifest bodies and tag freshness, so hits skip disk and SQLite.

Rules: only content every client may see (public) is answered from here without further
checks, and a tag only when upstream confirmed it to an anonymous (or the configured) credential;
entries are bounded by total bytes (oldest dropped first); a tag's freshness is held until the
wall-clock time upstream's confirmation expires, the same instant for every worker, or until
the invalidation hook says the tag changed (``drop_tag``) or names changed hands (``drop_tags``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from proxy.oci.digest import Digest


@dataclass(frozen=True, slots=True)
class HotManifest:
    digest: Digest
    media_type: str
    body: bytes


class HotSet:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024, enabled: bool = True) -> None:
        self.enabled = enabled  # off (config fast_paths.hot_manifests): nothing is kept
        self._manifests: OrderedDict[str, HotManifest] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._fresh: dict[tuple[str, str], tuple[str, float]] = {}

    def manifest(self, digest: str) -> HotManifest | None:
        return self._manifests.get(digest)

    def add_manifest(self, entry: HotManifest) -> None:
        key = str(entry.digest)
        if not self.enabled or key in self._manifests or len(entry.body) > self._max_bytes // 16:
            return
        self._manifests[key] = entry
        self._bytes += len(entry.body)
        while self._bytes > self._max_bytes:
            _, dropped = self._manifests.popitem(last=False)
            self._bytes -= len(dropped.body)

    def fresh_digest(self, scope: str, tag: str) -> str | None:
        """The digest a tag resolves to while upstream's confirmation holds, else None."""
        entry = self.freshness(scope, tag)
        return None if entry is None else entry[0]

    def freshness(self, scope: str, tag: str) -> tuple[str, float] | None:
        """(digest, until) while upstream's confirmation of the tag holds, else None."""
        entry = self._fresh.get((scope, tag))
        if entry is None:
            return None
        if entry[1] <= time.time():
            del self._fresh[(scope, tag)]
            return None
        return entry

    def drop_tag(self, scope: str, tag: str) -> None:
        self._fresh.pop((scope, tag), None)

    def drop_tags(self) -> None:
        """Forget every tag's freshness (manifests by digest never change and stay)."""
        self._fresh.clear()

    def set_fresh(self, scope: str, tag: str, digest: str, until: float) -> None:
        if not self.enabled:
            return
        if len(self._fresh) > 100_000:
            self._fresh.clear()
        self._fresh[(scope, tag)] = (digest, until)
