"""One upstream GET of a manifest across workers and replicas, however requests are spread.

Rules:
- the first process to take the flight's shared lock (Redis, else the store's diskcache) fetches;
  its lock holds a token of its own, and it publishes the outcome under that token: the digest
  it stored, or that upstream has no such manifest;
- the others wait for that outcome (polling the shared cache) and then serve the manifest from
  the store they share with the leader; a replica on a disk of its own that lacks it copies it
  from the leader's replica (the outcome names it: ``cluster.advertise_url``), verified, or when
  it cannot, fetches for itself; so does any process once the leader failed for another reason
  than a 404 (it says so), at once (at worst one GET per process, as without sharing);
- a process that takes the lock just after a leader finished takes that leader's outcome when it
  is under ``_RECENT_SECONDS`` old (it asked for the same thing at the same moment);
- a leader releases only its own lock (one that outlived ``lock_ttl`` may be another's by then);
  a leader that dies leaves its lock to expire: a waiter then takes it and fetches;
- nothing is waited for longer than ``lock_ttl`` in all.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Awaitable, Callable

from proxy.errors import ManifestUnknown
from proxy.storage.meta import TagRecord
from proxy.storage.shared import SharedCache

_POLL_SECONDS = 0.05
_OUTCOME_SECONDS = 60.0  # how long a published outcome stays readable by the waiters
_RECENT_SECONDS = 2.0  # a leader that finds an outcome this young takes it instead of fetching
_MISSING = "!missing"
_FAILED = "!failed"


class ClusterFlight:
    """Runs a manifest fetch once for every process that shares ``shared``."""

    def __init__(self, shared: SharedCache, poll: float = _POLL_SECONDS) -> None:
        self._shared = shared
        self._poll = poll
        self.own_url: str | None = None  # this replica's advertised URL, named in its outcomes

    async def run(self, key: str, lock_ttl: float, fetch: Callable[[], Awaitable[TagRecord]],
                  adopt: Callable[[str, float, str | None], Awaitable[TagRecord | None]]
                  ) -> tuple[TagRecord, bool]:
        """(record, joined): ``fetch()`` here, or ``adopt(digest, checked_at, leader_url)`` of
        another process's outcome (``leader_url``: the replica that stored it, when advertised)."""
        lock_key, outcome_key = f"mlock:{key}", f"mdone:{key}"
        deadline = time.monotonic() + lock_ttl
        token = secrets.token_hex(8)
        while True:
            if await self._shared.add(lock_key, token, lock_ttl):
                try:
                    # a leader that finished just before we asked: its answer is a moment old
                    recent = await self._outcome(outcome_key)
                    if recent is not None and recent[1] not in (_MISSING, _FAILED) \
                            and 0 <= time.time() - recent[2] < _RECENT_SECONDS:
                        record = await adopt(recent[1], recent[2], recent[3])
                        if record is not None:
                            return record, True
                    return await self._lead(outcome_key, token, fetch), False
                finally:
                    await self._shared.release(lock_key, token)
            leader = await self._shared.get(lock_key)
            if not isinstance(leader, str):
                if time.monotonic() >= deadline:
                    return await fetch(), False
                continue  # the leader just finished: its outcome is taken by the next leader's look
            outcome = await self._wait(lock_key, outcome_key, leader, deadline)
            if outcome is not None and outcome[1] == _MISSING:
                raise ManifestUnknown("manifest unknown upstream (asked by another replica just now)")
            if outcome is not None and outcome[1] != _FAILED:
                record = await adopt(outcome[1], outcome[2], outcome[3])
                if record is not None:
                    return record, True
            if outcome is not None or time.monotonic() >= deadline:
                # not in this store, the leader failed (each asks for itself, at once), or it is stuck
                return await fetch(), False
            # the leader is gone without an outcome (it died): try to lead

    async def _lead(self, outcome_key: str, token: str, fetch: Callable[[], Awaitable[TagRecord]]) -> TagRecord:
        try:
            record = await fetch()
        except ManifestUnknown:
            await self._shared.set(outcome_key, [token, _MISSING, time.time(), None], _OUTCOME_SECONDS)
            raise
        except Exception:
            await self._shared.set(outcome_key, [token, _FAILED, time.time(), None], _OUTCOME_SECONDS)
            raise
        await self._shared.set(outcome_key, [token, record.digest, time.time(), self.own_url], _OUTCOME_SECONDS)
        return record

    async def _outcome(self, outcome_key: str) -> tuple[str, str, float, str | None] | None:
        """(leader's token, digest or !missing/!failed, upstream's time, leader's URL or None)."""
        value = await self._shared.get(outcome_key)
        if isinstance(value, list) and len(value) == 4:
            try:
                return str(value[0]), str(value[1]), float(value[2]), value[3] if isinstance(value[3], str) else None
            except (TypeError, ValueError):
                return None
        return None

    async def _wait(self, lock_key: str, outcome_key: str, leader: str,
                    deadline: float) -> tuple[str, str, float, str | None] | None:
        """The outcome of ``leader``'s fetch; None once its lock is gone without one, or at the deadline."""
        while time.monotonic() < deadline:
            await asyncio.sleep(self._poll)
            outcome = await self._outcome(outcome_key)
            if outcome is not None and outcome[0] == leader:
                return outcome
            if await self._shared.get(lock_key) != leader:
                outcome = await self._outcome(outcome_key)  # it may have finished in between
                return outcome if outcome is not None and outcome[0] == leader else None
        return None
