"""Short-lived facts shared between workers (diskcache) and between replicas (Redis, when configured).

Redis goes through aiocache, imported only then (it brings the redis client, ~8 MiB per
process); one machine's worker processes share a diskcache (SQLite) directory. Keys carry a purpose prefix:
``fresh:`` (a tag upstream confirmed within its TTL), ``authz:`` (a credential may read a
repository), ``neg:`` (upstream said 404), ``tok:`` (a token Wharf issued),
``lock:`` (one worker or replica revalidates a tag at a time). Every value has a TTL; nothing
here is needed after a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diskcache


class _DiskBackend:
    """diskcache (SQLite) with expiry: shared by the worker processes of one machine."""

    def __init__(self, directory: Path) -> None:
        self._cache = diskcache.Cache(str(directory), eviction_policy="none")

    async def get(self, key: str) -> Any:
        return self._cache.get(key)

    async def set(self, key: str, value: Any, ttl: float) -> None:
        self._cache.set(key, value, expire=ttl)

    async def add(self, key: str, value: Any, ttl: float) -> bool:
        return bool(self._cache.add(key, value, expire=ttl))

    async def delete(self, key: str) -> None:
        self._cache.delete(key)

    async def close(self) -> None:
        self._cache.expire()
        self._cache.close()


class SharedCache:
    """A TTL key/value cache; ``add`` is atomic (set-if-absent) on every backend.

    Backends: Redis when a URL is configured (shared by replicas), else diskcache in ``disk_dir``
    (shared by the worker processes of one machine).
    """

    def __init__(self, redis_url: str | None, disk_dir: Path, namespace: str = "wharf:") -> None:
        if redis_url:
            from aiocache import Cache
            from aiocache.serializers import JsonSerializer

            self.backend = "redis"
            self._cache = Cache.from_url(redis_url)
            self._cache.serializer = JsonSerializer()
            self._cache.namespace = namespace
        else:
            self.backend = "disk"
            self._cache = _DiskBackend(disk_dir)

    async def get(self, key: str) -> Any:
        return await self._cache.get(key)

    async def set(self, key: str, value: Any, ttl: float) -> None:
        if ttl <= 0:
            return
        await self._cache.set(key, value, ttl=ttl)

    async def add(self, key: str, value: Any, ttl: float) -> bool:
        """Set only if absent; True when this call set it."""
        try:
            return bool(await self._cache.add(key, value, ttl=ttl))
        except ValueError:
            return False

    async def delete(self, key: str) -> None:
        await self._cache.delete(key)

    async def ping(self) -> bool:
        if self.backend != "redis":
            return True
        try:
            await self._cache.exists("ping")
            return True
        except Exception:
            return False

    async def close(self) -> None:
        await self._cache.close()
