"""Short-lived facts shared between workers (diskcache) and between replicas (Redis, when configured).

Redis goes through aiocache, imported only then (it brings the redis client, ~8 MiB per
process); one machine's worker processes share a diskcache (SQLite) directory. Keys carry a purpose prefix:
``fresh:`` (a tag upstream confirmed within its TTL), ``authz:`` (a credential may read a
repository), ``neg:`` (upstream said 404), ``rl:`` (upstream's rate-limit reading),
``lock:`` (one worker or replica revalidates a tag at a time). Every value has a TTL; nothing
here is needed after a restart, and no client secret is ever a key or a value (credentials
appear only as hashes; Wharf's tokens carry their credential themselves, encrypted).

Redis down: Redis is an optimisation, never a dependency. Every operation on it is bounded by
``redis.timeout`` (socket and operation; an operation that timed out is tried once more); the
first failure switches this process to local coordination (the diskcache of the store, as
without Redis), logs one warning, and sets the
``wharf_shared_cache_degraded`` gauge; a watcher pings Redis every ``redis.retry_seconds`` and
switches back (one more log line) when it answers. Facts learned during the outage stay local:
at worst a replica asks upstream once more than it would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator

import diskcache

from proxy.storage.space import is_sqlite_full

log = logging.getLogger("wharf.shared")


@contextlib.contextmanager
def _unless_full() -> Iterator[None]:
    """Swallow SQLite's "database or disk is full" (and only that)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if not is_sqlite_full(exc):
            raise


class _DiskBackend:
    """diskcache (SQLite) with expiry: shared by the worker processes of one machine."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)  # only Wharf's own user may read what its workers share
        self._cache = diskcache.Cache(str(directory), eviction_policy="none")

    async def get(self, key: str) -> Any:
        return self._cache.get(key)

    # On a full disk these facts are best effort: a fact not shared costs at most one more upstream
    # request, and a lock that cannot be written is taken (the caller goes on as if alone).
    async def set(self, key: str, value: Any, ttl: float) -> None:
        with _unless_full():
            self._cache.set(key, value, expire=ttl)

    async def add(self, key: str, value: Any, ttl: float) -> bool:
        with _unless_full():
            return bool(self._cache.add(key, value, expire=ttl))
        return True

    async def delete(self, key: str) -> None:
        with _unless_full():
            self._cache.delete(key)

    async def close(self) -> None:
        self._cache.expire()
        self._cache.close()


class _RedisBackend:
    """aiocache's Redis cache, every call bounded by ``timeout`` and never retried by the client."""

    def __init__(self, url: str, namespace: str, timeout: float) -> None:
        from aiocache import Cache
        from aiocache.serializers import JsonSerializer
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._cache = Cache.from_url(url)
        self._cache.serializer = JsonSerializer()
        self._cache.namespace = namespace
        self._cache.timeout = timeout  # aiocache wraps each operation in wait_for(timeout)
        # a hung or absent Redis must fail within ``timeout``: no socket waits longer, and the
        # client does not retry on its own (the fallback is ours to decide)
        self._cache.client.connection_pool.connection_kwargs.update(
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))

    async def get(self, key: str) -> Any:
        return await self._cache.get(key)

    async def set(self, key: str, value: Any, ttl: float | None) -> None:
        await self._cache.set(key, value, ttl=ttl)

    async def add(self, key: str, value: Any, ttl: float | None) -> bool:
        try:
            return bool(await self._cache.add(key, value, ttl=ttl))
        except ValueError:  # aiocache: the key exists
            return False

    async def delete(self, key: str) -> None:
        await self._cache.delete(key)

    async def ping(self) -> None:
        await self._cache.exists("ping")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._cache.close()


def _is_timeout(error: BaseException) -> bool:
    from redis.exceptions import TimeoutError as RedisTimeout

    return isinstance(error, (asyncio.TimeoutError, RedisTimeout))


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, asyncio.TimeoutError)  # OSError: refused, reset, unreachable


class SharedCache:
    """A TTL key/value cache; ``add`` is atomic (set-if-absent) on every backend.

    Backends: Redis when a URL is configured (shared by replicas), else diskcache in ``disk_dir``
    (shared by the worker processes of one machine). While Redis does not answer, the diskcache
    stands in for it (see the module docstring); callers never see a Redis error.
    """

    def __init__(self, redis_url: str | None, disk_dir: Path, namespace: str = "wharf:", *,
                 timeout: float = 0.5, retry_seconds: float = 5.0,
                 on_degraded: Callable[[bool], None] | None = None) -> None:
        self._disk = _DiskBackend(disk_dir)
        self._redis = _RedisBackend(redis_url, namespace, timeout) if redis_url else None
        self.backend = "redis" if self._redis is not None else "disk"
        self._errors = _redis_errors() if self._redis is not None else ()
        self._retry_seconds = retry_seconds
        self._on_degraded = on_degraded
        self.redis_up = self._redis is not None
        self._watcher: asyncio.Task | None = None

    @property
    def degraded(self) -> bool:
        """True while Redis is configured but unreachable (coordination is local meanwhile)."""
        return self._redis is not None and not self.redis_up

    async def _call(self, operation: str, *args: Any) -> Any:
        """Run ``operation`` on Redis while it answers, else on the local diskcache."""
        if self._redis is not None:
            self._watch()
            if self.redis_up:
                try:
                    return await self._on_redis(operation, *args)
                except self._errors as error:
                    self._set_up(False, error)
        return await getattr(self._disk, operation)(*args)

    async def _on_redis(self, operation: str, *args: Any) -> Any:
        """Run ``operation`` on Redis, once more if it timed out: one slow answer (a busy event
        loop, a new connection) is not an outage; a Redis that hangs costs two timeouts, once.

        An ``add`` that timed out may have been carried out all the same: it is not sent again;
        the key is read back instead, and the add counts as ours when it holds our value (so
        callers of ``add`` give values of their own, e.g. a token).
        """
        assert self._redis is not None
        try:
            return await getattr(self._redis, operation)(*args)
        except self._errors as error:
            if not _is_timeout(error):
                raise
        if operation == "add":
            key, value = args[0], args[1]
            if await self._redis.get(key) == value:
                return True
        return await getattr(self._redis, operation)(*args)

    async def get(self, key: str) -> Any:
        return await self._call("get", key)

    async def set(self, key: str, value: Any, ttl: float) -> None:
        if ttl <= 0:
            return
        await self._call("set", key, value, ttl)

    async def add(self, key: str, value: Any, ttl: float) -> bool:
        """Set only if absent; True when this call set it. Give a value of the caller's own (a
        token): an add whose answer was lost is recognised by it."""
        return bool(await self._call("add", key, value, ttl))

    async def delete(self, key: str) -> None:
        await self._call("delete", key)

    async def release(self, key: str, value: Any) -> None:
        """Delete a lock ``key`` only while it holds ``value`` (ours, not a later holder's once
        ours expired). Read, then delete: a holder that took it in between loses it early, at worst."""
        if await self._call("get", key) == value:
            await self._call("delete", key)

    async def agree(self, key: str, value: str) -> str | None:
        """The value replicas agree on for ``key``: Redis's, or ``value`` if Redis had none.

        Set-if-absent without expiry, then read back. None without Redis or while it is down:
        the caller then falls back to a value of its own. Never for secrets of clients.
        """
        if self._redis is None or not self.redis_up:
            return None
        self._watch()
        try:
            await self._on_redis("add", key, value, None)
            agreed = await self._on_redis("get", key)
        except self._errors as error:
            self._set_up(False, error)
            return None
        return agreed if isinstance(agreed, str) else None

    async def ping(self) -> bool:
        """True when the configured backend answers now (always with the local diskcache)."""
        if self._redis is None:
            return True
        self._watch()
        if self.redis_up:
            try:
                await self._redis.ping()
            except self._errors as error:
                self._set_up(False, error)
        return self.redis_up

    def _set_up(self, up: bool, error: BaseException | None = None) -> None:
        """Record a change of Redis's state: one log line and one gauge update per change."""
        if up == self.redis_up:
            return
        self.redis_up = up
        if up:
            log.warning("redis answers again: sharing caches and locks through it")
        else:
            log.warning("redis does not answer (%s): coordinating through the local store until it "
                        "does; checking every %gs", type(error).__name__ if error else "?",
                        self._retry_seconds)
        if self._on_degraded is not None:
            self._on_degraded(not up)

    def _watch(self) -> None:
        """Start (once, in the running loop) the watcher that notices Redis going and coming back."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch_loop())

    async def _watch_loop(self) -> None:
        assert self._redis is not None
        while True:
            await asyncio.sleep(self._retry_seconds)
            try:
                await self._redis.ping()
            except self._errors as error:
                self._set_up(False, error)
            else:
                self._set_up(True)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._redis is not None:
            await self._redis.close()
        await self._disk.close()
