"""One upstream download per blob across replicas on disks of their own (``cluster.advertise_url``).

Rules:
- the fill of a store (one process leads it: ``fills.py``) claims ``bfill:<digest>`` in the shared
  cache; the first claim names its replica (its advertised URL) and holds a token of its own. That
  replica downloads from upstream; its claim is renewed every third of ``lease_seconds`` while it
  does, so it lapses within ``lease_seconds`` of the replica dying, and another replica's fill
  claims it then (takeover);
- every other replica's fill streams the blob from the claimant (``PeerBlobs``) into its own store
  and verifies it there as an upstream download is; when that stream breaks, it claims again;
- a claimant whose download failed lets go at once: what upstream answers one credential (a 404,
  a 401, a 429) says nothing to another, so the next fill claims and asks for itself;
- a download that verified leaves the claim as a pointer to the replica that holds the blob, for
  ``_STORED_SECONDS``: a replica that misses later streams it from there. A pointer to a replica
  that no longer has it is dropped by the first fill that finds so;
- a claim naming this replica (a previous life of it, or a blob it has since evicted) is ours;
- a fill that cannot get the blob from one claim for twice ``lease_seconds`` (a replica that
  answers but fails), or that the claimant refuses (the replicas' secrets differ), downloads it
  itself, with a warning: a broken peer costs one more download, never a hung pull;
- without Redis, or while it is down, claims live in the store's own diskcache: each replica
  downloads for itself (at worst one download per replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from proxy.oci.digest import Digest
from proxy.storage.shared import SharedCache

_STORED_SECONDS = 3600.0
_RETRY_SECONDS = 0.25  # between two tries at a claimant that did not answer
FILLING, STORED = "filling", "stored"


@dataclass(frozen=True, slots=True)
class Claim:
    """Who fills (or holds) a blob for the cluster, as the shared cache says."""

    key: str
    value: dict[str, Any]
    ours: bool

    @property
    def holder(self) -> str:
        return str(self.value.get("url", ""))

    @property
    def state(self) -> str:
        return str(self.value.get("state", FILLING))



class PeerFlight:
    """Claims of blob downloads in the shared cache, made by the replica at ``own_url``."""

    def __init__(self, shared: SharedCache, own_url: str, lease_seconds: float) -> None:
        self._shared = shared
        self.own_url = own_url
        self.lease_seconds = lease_seconds

    async def claim(self, digest: Digest) -> Claim:
        """Ours, when no other replica fills or holds ``digest``; else the other replica's claim."""
        key = f"bfill:{digest}"
        mine = {"url": self.own_url, "token": secrets.token_hex(8), "state": FILLING}
        while True:
            if await self._shared.add(key, mine, self.lease_seconds):
                return Claim(key, mine, True)
            held = await self._shared.get(key)
            if held is None:
                continue  # it lapsed between the two calls
            if not isinstance(held, dict) or held.get("url") == self.own_url:
                await self._shared.set(key, mine, self.lease_seconds)  # ours from before, or not a claim at all
                return Claim(key, mine, True)
            return Claim(key, held, False)

    async def lead(self, claim: Claim, download: Callable[[], Awaitable[None]]) -> None:
        """Run ``download`` under ``claim``, renewed while it runs; then point at this replica, or
        let go when it failed."""
        renewing = asyncio.ensure_future(self._renew(claim))
        try:
            await download()
        except BaseException:
            await _stop(renewing)
            with contextlib.suppress(Exception):
                await self._shared.release(claim.key, claim.value)
            raise
        await _stop(renewing)
        with contextlib.suppress(Exception):  # the blob is stored: a pointer is only a help
            if await self._holds(claim):
                await self._shared.set(claim.key, {**claim.value, "state": STORED}, _STORED_SECONDS)

    async def drop(self, claim: Claim) -> None:
        """Forget a pointer whose replica gave bytes that are not the blob (they never verify)."""
        if claim.state == STORED:
            await self._shared.release(claim.key, claim.value)

    async def passed(self, claim: Claim) -> None:
        """The claimant could not give the blob: a pointer to it goes; a fill's claim lapses by
        itself when its replica is gone, so wait a moment before the next try."""
        if claim.state == STORED:
            await self._shared.release(claim.key, claim.value)
            return
        await asyncio.sleep(_RETRY_SECONDS)

    async def _holds(self, claim: Claim) -> bool:
        return await self._shared.get(claim.key) == claim.value

    async def _renew(self, claim: Claim) -> None:
        """Keep the claim alive while the download runs: put it back if it lapsed (a Redis that
        did not answer for a while), never over another replica's."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                held = await self._shared.get(claim.key)
                if held == claim.value:
                    await self._shared.set(claim.key, claim.value, self.lease_seconds)
                elif held is None:
                    await self._shared.add(claim.key, claim.value, self.lease_seconds)
            except Exception:  # the shared cache never fails a download
                continue


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
