"""Hashing off the event loop: content is hashed in a worker thread, in order, in batches.

hashlib releases the GIL on large buffers, so a fill's digest is computed while the event loop
goes on receiving and serving; the loop only waits when the thread falls a whole batch behind.
"""

from __future__ import annotations

import asyncio
import hashlib

from proxy.oci.digest import Digest

_BATCH = 1024 * 1024


def _update_all(hasher: "hashlib._Hash", chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)


class ThreadedHasher:
    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._hasher = hashlib.new(algorithm)
        self._batch: list[bytes] = []
        self._batched = 0
        self._pending: asyncio.Future | None = None

    async def update(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched >= _BATCH:
            await self._submit()

    async def _submit(self) -> None:
        if self._pending is not None:
            await self._pending  # keeps order, and at most two batches in memory
        batch, self._batch, self._batched = self._batch, [], 0
        self._pending = asyncio.get_running_loop().run_in_executor(None, _update_all, self._hasher, batch)

    async def digest(self) -> Digest:
        await self._submit()
        await self._pending
        return Digest(self.algorithm, self._hasher.hexdigest())
