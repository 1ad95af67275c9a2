"""Short-lived facts shared between replicas: in memory by default, in Redis when configured.

Built on aiocache so the same calls run against either backend. Keys carry a purpose prefix:
``fresh:`` (a tag upstream confirmed within its TTL), ``authz:`` (a credential may read a
repository), ``neg:`` (upstream said 404), ``tok:`` (a token Wharf issued), ``rl:`` (rate limits).
Every value has a TTL; nothing here is needed after a restart.
"""

from __future__ import annotations

from typing import Any

from aiocache import Cache
from aiocache.serializers import JsonSerializer


class SharedCache:
    """A TTL key/value cache; ``add`` is atomic (set-if-absent) on both backends."""

    def __init__(self, redis_url: str | None = None, namespace: str = "wharf:") -> None:
        self.backend = "redis" if redis_url else "memory"
        if redis_url:
            self._cache = Cache.from_url(redis_url)
            self._cache.serializer = JsonSerializer()
            self._cache.namespace = namespace
        else:
            self._cache = Cache(Cache.MEMORY, serializer=JsonSerializer(), namespace=namespace)

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
        if self.backend == "memory":
            return True
        try:
            await self._cache.exists("ping")
            return True
        except Exception:
            return False

    async def close(self) -> None:
        await self._cache.close()
