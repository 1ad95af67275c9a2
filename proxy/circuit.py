"""A circuit breaker: stop waiting on a service that does not answer (an upstream registry,
the object storage bucket).

Rules:
- the caller says what a failure is and what an answer is (``upstream/client.py``,
  ``storage/objects.py``); each call of ``failed`` or ``succeeded`` is one outcome;
- ``failures`` failures in a row open the circuit: for ``cooldown`` seconds every request fails
  at once (``admit`` is False: the caller raises Unavailable, so the registry layer serves what
  it has stored at once instead of waiting on the service again);
- after the cool-down the circuit is half-open: one request goes through as a probe, the others
  still fail at once; an answer closes the circuit, a failure opens it for another cool-down;
  a probe that never finished (cancelled) lets the next request probe;
- each worker process keeps its own circuits; ``failures`` of 0 turns the breaker off.
"""

from __future__ import annotations

import time
from typing import Callable

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the /metrics gauge


class Circuit:
    """Failures in a row, and whether requests may go to the service now."""

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.cause = ""  # the last failure, for error messages

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        return OPEN if self.retry_in() > 0 else HALF_OPEN

    @property
    def failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """Seconds until the cool-down ends (0 when closed or half-open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._cooldown - self._clock())

    def admit(self) -> bool:
        """May a request go out now? When half-open, the one admitted is the probe."""
        if self._threshold == 0 or self._opened_at is None:
            return True
        if self.retry_in() > 0 or self._probing:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        """The service answered: close the circuit."""
        self._failures, self._opened_at, self._probing = 0, None, False

    def failed(self, cause: str) -> bool:
        """Count a failure; True when it opened the circuit just now."""
        self._failures += 1
        self.cause = cause
        if self._threshold == 0:
            return False
        if self._probing or (self._opened_at is None and self._failures >= self._threshold):
            self._opened_at, self._probing = self._clock(), False
            return True
        return False

    def abandoned(self) -> None:
        """A request admitted as the probe ended without an outcome: the next one may probe."""
        self._probing = False
