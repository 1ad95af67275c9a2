"""Event-loop lag: how late the loop runs a timer, the first sign that something blocks it.

A probe sleeps ``interval`` seconds and measures how much later than asked it woke up; every
reading goes into ``wharf_event_loop_lag_seconds`` (a histogram) and the worst of the last
``window`` seconds is ``wharf_event_loop_lag_max_seconds``. Started with the app (``lifecycle``).
"""

from __future__ import annotations

import asyncio
from collections import deque

from proxy.metrics import Metrics


async def watch_loop_lag(metrics: Metrics, interval: float = 0.25, window: float = 60.0) -> None:
    """Run until cancelled, recording each probe's lag."""
    loop = asyncio.get_running_loop()
    recent: deque[tuple[float, float]] = deque()  # (when, lag), oldest first
    while True:
        asked = loop.time() + interval
        await asyncio.sleep(interval)
        now = loop.time()
        lag = max(0.0, now - asked)
        metrics.loop_lag.observe(lag)
        recent.append((now, lag))
        while recent[0][0] < now - window:
            recent.popleft()
        metrics.loop_lag_max.set(max(value for _, value in recent))
