"""One structured (JSON) access log line per request, with the cache status. Never logs headers.

``bytes`` counts the body bytes sent (0 for HEAD), like nginx's ``$body_bytes_sent``.

Lines are formatted directly (no LogRecord, no json.dumps of a dict) and written to a buffer
that is flushed when it fills or a quarter second after its first unflushed line: logging must
stay cheap on a path that serves thousands of requests a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Response, StreamResponse

from proxy.http.keys import BODY_BYTES, CACHE_STATUS, ERROR_CODE

_FLUSH_BYTES = 64 * 1024
_FLUSH_DELAY = 0.25


class AccessLogSink:
    """A buffered line writer onto a file descriptor (stderr by default)."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stderr.fileno() if fd is None else fd
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(_FLUSH_DELAY, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "replace")
        self._lines, self._size = [], 0
        try:
            os.write(self._fd, data)
        except OSError:
            pass


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp access logger; ``logger`` is an AccessLogSink (or a logging.Logger in tests)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        body = response.body if isinstance(response, Response) else None
        sent = len(body) if isinstance(body, bytes) else request.get(BODY_BYTES, 0)
        self.log_line(request.method, request.path, response.status, sent, time,
                      request.get(CACHE_STATUS, "-"), request.get(ERROR_CODE), request.remote)

    def log_line(self, method: str, path: str, status: int, body_bytes: int, seconds: float,
                 cache: str, error: str | None, remote: str | None) -> None:
        """The line for one request; also used for answers replayed without request objects."""
        line = (f'{{"method":"{method}","path":{json.dumps(path)},'
                f'"status":{status},"bytes":{body_bytes},"ms":{seconds * 1000:.2f},'
                f'"cache":"{cache}",'
                f'"error":{"null" if error is None else chr(34) + error + chr(34)},'
                f'"remote":"{remote}"}}')
        if isinstance(self.logger, AccessLogSink):
            self.logger.write(line + "\n")
        else:
            self.logger.info(line)

    @property
    def enabled(self) -> bool:
        return True
