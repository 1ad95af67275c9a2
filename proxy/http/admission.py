"""The connection cap: beyond ``server.max_connections`` a new connection is refused cleanly.

Rules: a worker holds at most ``max_connections`` client connections (with ``auto``, derived
from the process's open-file limit so that the store, the upstream connections and the files
being served always find a descriptor). At the cap, a new connection takes the place of the
oldest one that is idle or still sending its head (the server sheds it); only when every
connection is at work is the new one refused: it is answered
``503 UNAVAILABLE`` with ``Retry-After`` and ``Connection: close`` as soon as its first bytes
arrive (so the client reads the answer instead of a reset), or after ``_REFUSAL_WAIT`` seconds
if it sends nothing, and closed. While many refusals wait at once (a flood), later ones are closed
at once without an answer. Connections already open keep working.
"""

from __future__ import annotations

import asyncio
import json
import resource
from typing import Any

_RESERVED_FILES = 512     # descriptors kept for the store, upstream connections and sendfile
_MIN_CONNECTIONS = 64
_REFUSAL_WAIT = 0.5       # seconds a refused connection may take to send its request
_MAX_WAITING_REFUSALS = 256

_BODY = json.dumps({"errors": [{"code": "UNAVAILABLE",
                                "message": "too many connections; retry later"}]}).encode()
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           b"Retry-After: 1\r\nConnection: close\r\n"
           b"Docker-Distribution-API-Version: registry/2.0\r\n"
           b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


def connection_cap(configured: int) -> int:
    """``configured`` when set; else half the descriptors left after a reserve (a client connection
    may hold a socket and a blob file), at least ``_MIN_CONNECTIONS``."""
    if configured > 0:
        return configured
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(_MIN_CONNECTIONS, (soft - _RESERVED_FILES) // 2)


class Refusals:
    """Counts the refusals waiting for their request, so that a flood cannot hold descriptors."""

    def __init__(self, on_refused) -> None:
        self.waiting = 0
        self._on_refused = on_refused  # called once per refused connection

    def protocol(self) -> "RefusedConnection":
        self._on_refused()
        return RefusedConnection(self)


class RefusedConnection(asyncio.Protocol):
    """A connection over the cap: the 503 once its first bytes arrived (or after a short wait), then close."""

    def __init__(self, refusals: Refusals) -> None:
        self._refusals = refusals
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = False

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        refusals = self._refusals
        if refusals.waiting >= _MAX_WAITING_REFUSALS:
            transport.close()
            return
        refusals.waiting += 1
        self._waiting = True
        self._timer = asyncio.get_running_loop().call_later(_REFUSAL_WAIT, self._refuse)

    def data_received(self, data: bytes) -> None:
        self._refuse()

    def eof_received(self) -> bool:
        self._refuse()
        return False

    def _refuse(self) -> None:
        transport = self._transport
        self._done()
        if transport is not None and not transport.is_closing():
            transport.write(REFUSAL)
            transport.close()  # after the answer has been written

    def connection_lost(self, exc: BaseException | None) -> None:
        self._done()
        self._transport = None

    def _done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting:
            self._waiting = False
            self._refusals.waiting -= 1
