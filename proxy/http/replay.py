"""Remembered answers that hold for every client, for the replaying server to send again.

A manifest hit that the registry marks as shared (public pull-through content: by digest for
good, by tag while upstream's confirmation holds) is remembered as the exact head and body Wharf
sent, keyed by everything that decides the answer: the raw path with its query and the
``Accept`` lines (GET and HEAD share an entry). Entries expire when the answer stops holding,
and are dropped at once when the tag they answer for changes (``drop_tag``) or names change
hands (``clear``), through the registry's invalidation hook, or when the registry's own check
says the answer no longer holds (``holds``: an offline answer, once the store's content changed);
the table is bounded by total bytes, oldest dropped first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

_MAX_BODY = 256 * 1024           # larger answers go through the application
_MAX_READERS = 256               # credentials remembered per answer of a package that is not public


@dataclass(frozen=True, slots=True)
class Replay:
    """One remembered answer: the head without Date and Server, the body, and until when it holds."""

    head: bytes          # headers, each ending in CRLF: no status line, no blank line
    body: bytes
    until: float         # time.time() after which the application answers again
    route: str           # metrics route label for GET; HEAD adds "_head"
    cache_kind: str      # "manifest" (by digest) or "tag"
    ref: tuple[str, str]  # (scope, tag or digest) the answer is for
    upstream: str | None = None  # for the access log
    on_hit: Callable[[], None] | None = None  # what a replayed GET must also do (count a download)
    on_pull: Callable[[], None] | None = None  # what a replayed GET or HEAD must also do (count a cached tag's pull)
    # None: the answer holds for every client; else the Authorization headers it was given to,
    # each with when that credential expires (None: never)
    readers: dict[str, float | None] | None = None
    holds: Callable[[], bool] | None = None  # asked before each replay: False drops the answer


class ReplayTable:
    """Remembered answers by (raw path with query, Accept lines); bounded by total bytes."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024,
                 before_local_hit: Callable[[], object] | None = None) -> None:
        # asked before a local repository's answer is replayed: another worker's push must count
        # at once (``Invalidation.poll``: one stat of the store's stamp)
        self._before_local_hit = before_local_hit
        self._entries: dict[tuple[str, tuple[str, ...]], Replay] = {}
        self._by_ref: dict[tuple[str, str], set[tuple[str, tuple[str, ...]]]] = {}  # (scope, ref) -> keys
        self._bytes = 0
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, raw_path: str, accept: tuple[str, ...], authorization: str | None = None) -> Replay | None:
        """The answer to replay, if one holds for this request (and, when it is not for everyone,
        for this Authorization header, until its credential expires)."""
        entry = self._entries.get((raw_path, accept))
        if entry is None:
            return None
        if self._before_local_hit is not None and entry.ref[0].startswith("/"):
            self._before_local_hit()
            entry = self._entries.get((raw_path, accept))
            if entry is None:
                return None
        now = time.time()
        if entry.until <= now or (entry.holds is not None and not entry.holds()):
            self._drop((raw_path, accept))
            return None
        if entry.readers is not None:
            if authorization is None or authorization not in entry.readers:
                return None
            expires = entry.readers[authorization]
            if expires is not None and expires <= now:
                return None
        return entry

    def remember(self, raw_path: str, accept: Sequence[str], headers: dict[str, str], body: bytes,
                 until: float, route: str, cache_kind: str, ref: tuple[str, str],
                 upstream: str | None = None, on_hit: Callable[[], None] | None = None,
                 reader: tuple[str, float | None] | None = None,
                 on_pull: Callable[[], None] | None = None,
                 holds: Callable[[], bool] | None = None) -> None:
        """Keep a 200 answer just sent; ``headers`` are exactly the ones the application sent;
        ``ref`` is the (scope, tag or digest) it answers for; ``holds``, when given, is asked before
        each replay (cheap: it runs on the loop), and a False drops the answer."""
        if len(body) > _MAX_BODY or until <= time.time():
            return
        key = (raw_path, tuple(accept))
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        readers = None
        if reader is not None:  # an answer for the callers the application let read it
            known = self._entries.get(key)
            readers = dict(known.readers) if known is not None and known.readers is not None \
                and known.body == body and len(known.readers) < _MAX_READERS else {}
            readers[reader[0]] = reader[1]
        entry = Replay(head.encode("latin-1"), body, until, route, cache_kind, ref, upstream, on_hit, on_pull,
                       readers, holds)
        self._drop(key)
        self._entries[key] = entry
        self._by_ref.setdefault(ref, set()).add(key)
        self._bytes += len(entry.head) + len(body)
        while self._bytes > self._max_bytes:  # oldest first
            self._drop(next(iter(self._entries)))

    def drop_tag(self, scope: str, tag: str) -> None:
        """Forget every answer for ``scope``'s ``tag`` (it moved or was deleted)."""
        for key in list(self._by_ref.get((scope, tag), ())):
            self._drop(key)

    def clear(self) -> None:
        self._entries.clear()
        self._by_ref.clear()
        self._bytes = 0

    def _drop(self, key: tuple[str, tuple[str, ...]]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.head) + len(entry.body)
            keys = self._by_ref.get(entry.ref)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_ref[entry.ref]


