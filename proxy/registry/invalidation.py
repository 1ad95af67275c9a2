"""One invalidation hook for every answer kept in memory (hot manifests, tag freshness, replays).

Rules:
- whoever changes what a tag or a name answers calls the hook: a tag moved or was deleted
  (``tag_changed``), or names changed hands, e.g. a namespace became local (``names_changed``);
- in this process every subscribed cache drops what the change touches before the writer
  returns, so the next request, on any connection, is answered by the application;
- the other worker processes of the store learn of it through a stamp file that each polls
  (``poll``, every ``POLL_SECONDS``); on a new stamp they drop every remembered answer, which
  is cheap (answers by tag or name are remembered again on the next hit) and never wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Subscriber:
    drop_tag: Callable[[str, str], None]   # (scope, tag)
    drop_all: Callable[[], None]


class Invalidation:
    """Fans changes out to this process's caches and, through ``stamp_path``, to other workers."""

    def __init__(self, stamp_path: Path | None = None) -> None:
        self._subscribers: list[Subscriber] = []
        self._stamp_path = stamp_path
        self._seen = self._stamp()

    def subscribe(self, drop_tag: Callable[[str, str], None], drop_all: Callable[[], None]) -> None:
        self._subscribers.append(Subscriber(drop_tag, drop_all))

    def tag_changed(self, scope: str, tag: str) -> None:
        """``scope``'s ``tag`` now answers differently (moved, deleted): forget remembered answers."""
        for subscriber in self._subscribers:
            subscriber.drop_tag(scope, tag)
        self._publish()

    def tags_changed(self, changed) -> None:
        """Each ``(scope, tag)`` of ``changed`` answers differently: forget them; one stamp for all."""
        for scope, tag in changed:
            for subscriber in self._subscribers:
                subscriber.drop_tag(scope, tag)
        self._publish()

    def names_changed(self) -> None:
        """Which names are local or upstream changed: forget every remembered answer by name."""
        self._drop_all()
        self._publish()

    def forget_here(self) -> None:
        """Forget every remembered answer in this process only (each process learns of the change
        itself, e.g. from the accounts' revision)."""
        self._drop_all()

    def poll(self) -> bool:
        """Drop everything when another process published a change since the last look."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        self._drop_all()
        return True

    def _drop_all(self) -> None:
        for subscriber in self._subscribers:
            subscriber.drop_all()

    def _stamp(self) -> tuple[int, int] | None:
        if self._stamp_path is None:
            return None
        try:
            stat = os.stat(self._stamp_path)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def _publish(self) -> None:
        """A new stamp file (new inode) for the other processes; our own change is already applied."""
        if self._stamp_path is None:
            return
        temp = self._stamp_path.with_name(f"{self._stamp_path.name}.{os.getpid()}.tmp")
        temp.write_bytes(b"")
        os.replace(temp, self._stamp_path)
        self._seen = self._stamp()
