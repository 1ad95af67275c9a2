"""What an upstream says of its pull quota and its back-off, and how long each reading holds.

Rules:
- ``ratelimit-limit`` / ``ratelimit-remaining`` (Docker Hub: ``100;w=21600``) are a reading that
  holds for its window, ``w=`` seconds, or ``DEFAULT_WINDOW`` when upstream names none; then it
  lapses, so Wharf leaves low-quota mode once what it knew is out of date;
- a 429, or a 503 with ``Retry-After``, blocks upstream for ``Retry-After`` seconds (a number or an
  HTTP date; ``DEFAULT_BLOCK`` when absent or unreadable);
- readings travel between workers and replicas as plain dicts with wall-clock times
  (``shared()`` / ``adopt()``), kept no longer than they hold; the newer reading wins, the later
  end of a block wins.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

DEFAULT_WINDOW = 600.0  # how long a reading without ``w=`` holds
DEFAULT_BLOCK = 30.0    # how long a 429 without a readable Retry-After keeps us away
_COUNT_RE = re.compile(r"^\s*(\d+)")
_WINDOW_RE = re.compile(r";\s*w\s*=\s*(\d+)")


def parse_quota(value: str | None) -> tuple[int | None, float | None]:
    """``"100;w=21600"`` -> ``(100, 21600.0)``; missing parts are None."""
    if not value:
        return None, None
    count, window = _COUNT_RE.match(value), _WINDOW_RE.search(value)
    return (int(count.group(1)) if count else None,
            float(window.group(1)) if window and int(window.group(1)) > 0 else None)


def parse_retry_after(value: str | None, now: float) -> float:
    """Seconds to wait from a ``Retry-After`` of delta-seconds or an HTTP date."""
    if not value:
        return DEFAULT_BLOCK
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return DEFAULT_BLOCK


@dataclass(slots=True)
class RateLimit:
    """What upstream last told us of its quota (until the reading lapses) and of its back-off."""

    _limit: int | None = None
    _remaining: int | None = None
    read_at: float = 0.0         # wall clock of the reading
    expires_at: float = 0.0      # wall clock when the reading lapses
    blocked_until: float = 0.0   # wall clock when upstream lets us back

    @property
    def limit(self) -> int | None:
        return self._limit if time.time() < self.expires_at else None

    @property
    def remaining(self) -> int | None:
        return self._remaining if time.time() < self.expires_at else None

    def blocked(self) -> bool:
        return time.time() < self.blocked_until

    def retry_after(self) -> int:
        """Whole seconds until the block ends (at least 1 while blocked)."""
        return max(1, math.ceil(self.blocked_until - time.time())) if self.blocked() else 0

    def lapse(self) -> bool:
        """Drop a reading whose window has passed; True when one was dropped just now."""
        if (self._limit is not None or self._remaining is not None) and time.time() >= self.expires_at:
            self._limit = self._remaining = None
            return True
        return False

    def note(self, status: int, headers: Mapping[str, str]) -> bool:
        """Take what one response says; True when it said anything (a reading or a block)."""
        now = time.time()
        limit, limit_window = parse_quota(headers.get("ratelimit-limit"))
        remaining, remaining_window = parse_quota(headers.get("ratelimit-remaining"))
        said = limit is not None or remaining is not None
        if said:
            self._limit = limit if limit is not None else self.limit
            self._remaining = remaining if remaining is not None else self.remaining
            self.read_at = now
            self.expires_at = now + (remaining_window or limit_window or DEFAULT_WINDOW)
        blocked = status == 429 or (status == 503 and "retry-after" in headers)
        if blocked:
            wait = parse_retry_after(headers.get("retry-after"), now) or DEFAULT_BLOCK
            self.blocked_until = max(self.blocked_until, now + wait)
        return said or blocked

    def shared(self) -> tuple[dict[str, Any], float]:
        """The reading for other workers, and how long it is worth keeping."""
        value = {"limit": self._limit, "remaining": self._remaining, "read_at": self.read_at,
                 "expires_at": self.expires_at, "blocked_until": self.blocked_until}
        return value, max(1.0, max(self.expires_at, self.blocked_until) - time.time())

    def adopt(self, value: Mapping[str, Any]) -> None:
        """Take another worker's reading if it is newer and still holds, and its block if longer."""
        try:
            read_at, expires_at = float(value.get("read_at", 0)), float(value.get("expires_at", 0))
            blocked_until = float(value.get("blocked_until", 0))
        except (TypeError, ValueError, AttributeError):
            return  # written by another version, or damaged: ours is as good
        if read_at > self.read_at and time.time() < expires_at:
            self._limit, self._remaining = value.get("limit"), value.get("remaining")
            self.read_at, self.expires_at = read_at, expires_at
        self.blocked_until = max(self.blocked_until, blocked_until)
