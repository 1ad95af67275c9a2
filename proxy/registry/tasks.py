"""App-owned background work: tasks that outlive the request that started them, and single-flight."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Hashable

log = logging.getLogger("wharf.tasks")


class BackgroundTasks:
    """Tracks detached tasks so shutdown can cancel and await them; failures are logged, not lost."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background task %s failed: %r", task.get_name(), task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class SingleFlight:
    """Merges concurrent calls with the same key into one run; every caller gets the same outcome.

    The run is a detached task, so a caller that goes away (client hang-up) does not cancel the
    work others wait on.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future] = {}

    def running(self, key: Hashable) -> bool:
        return key in self._running

    async def run(self, key: Hashable, factory: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """Return (result, joined): joined is True when this caller merged into a running call."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running), True
        future = asyncio.ensure_future(factory())
        self._running[key] = future
        future.add_done_callback(lambda f: self._finish(key, f))
        return await asyncio.shield(future), False

    def _finish(self, key: Hashable, future: asyncio.Future) -> None:
        if self._running.get(key) is future:
            del self._running[key]
        if not future.cancelled():
            future.exception()  # mark retrieved; callers re-raise it
