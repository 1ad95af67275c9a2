"""One upstream download per blob across replicas on disks of their own (``cluster.advertise_url``).

Rules:
- the fill of a store (one process leads it: ``fills.py``) claims ``bfill:<digest>`` in the shared
  cache; the first claim names its replica (its advertised URL) and holds a token of its own. That
  replica downloads from upstream; its claim is renewed every third of ``lease_seconds`` while it
  does, so it lapses within ``lease_seconds`` of the replica dying, and another replica's fill
  claims it then (takeover);
- every other replica's fill streams the blob from the claimant (``PeerBlobs``) into its own store
  and verifies it there as an upstream download is; when that stream breaks, it claims again;
- a claimant whose download failed says so for ``_FAILED_SECONDS`` before it lets go: the others
  fail as its clients did instead of asking upstream again at once;
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

from proxy.errors import BlobUnknown
from proxy.oci.digest import Digest
from proxy.storage.shared import SharedCache

_STORED_SECONDS = 3600.0
_FAILED_SECONDS = 2.0
_RETRY_SECONDS = 0.25  # between two tries at a claimant that did not answer
FILLING, STORED, FAILED = "filling", "stored", "failed"


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

    @property
    def missing(self) -> bool:
        """A failed claim's download met a 404 upstream."""
        return bool(self.value.get("missing"))


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
        say it failed (an OCI error: upstream's answer, for every replica alike)."""
        renewing = asyncio.ensure_future(self._renew(claim))
        try:
            await download()
        except BaseException as exc:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            with contextlib.suppress(Exception):
                if not isinstance(exc, asyncio.CancelledError) and await self._holds(claim):
                    failed = {**claim.value, "state": FAILED, "missing": isinstance(exc, BlobUnknown)}
                    await self._shared.set(claim.key, failed, _FAILED_SECONDS)
                else:
                    await self._shared.release(claim.key, claim.value)
            raise
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        if await self._holds(claim):
            await self._shared.set(claim.key, {**claim.value, "state": STORED}, _STORED_SECONDS)

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
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if not await self._holds(claim):
                return  # it lapsed (a stall longer than the lease): another replica may fill too
            await self._shared.set(claim.key, claim.value, self.lease_seconds)
