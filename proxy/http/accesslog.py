"""One JSON access-log line per request, in the shape of every other log line (``proxy.logs``).

Each line: ``time``, ``level`` ("info"), ``logger`` ("wharf.access"), ``message``
("GET /v2/... 200"), then ``request_id``, ``method``, ``path``, ``query`` (raw, as sent),
``status``, ``bytes``, ``duration_ms``, ``remote``, ``user_agent``, ``upstream``, ``cache``,
``error`` (the OCI code answered) and ``cause`` (what went wrong, in words); absent ones are null.

Rules:
- ``status`` is what the request came to: the status answered or, when the answer broke off
  mid-body, 499 (the client closed the connection, as nginx logs it) or the status of the
  upstream failure that aborted it (502: upstream sent content that does not match its digest);
- ``bytes`` counts the body bytes handed to the kernel (0 for HEAD), like nginx's
  ``$body_bytes_sent`` — for a broken-off answer, the bytes sent before it broke;
- no header is logged but ``User-Agent`` and ``X-Request-Id``: never a credential;
- the request id is the client's ``X-Request-Id`` when it is a sane token, else a new one.

Lines are formatted directly (no LogRecord, no json.dumps of a dict; strings escaped by the C
encoder) and written to a buffer that is flushed when it fills or a quarter second after its
first unflushed line: logging must stay cheap on a path that serves thousands of requests a second.
"""

from __future__ import annotations

import asyncio
import json.encoder
import os
import re
import sys
import time

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Response, StreamResponse

from proxy.http.keys import (BODY_BYTES, CACHE_STATUS, CAUSE, ERROR_CODE, OUTCOME_STATUS, REQUEST_ID, STARTED,
                             UPSTREAM)
from proxy.logs import UtcClock

_FLUSH_BYTES = 64 * 1024
_FLUSH_DELAY = 0.25
_ATOMIC_WRITE = 4096  # PIPE_BUF: writes up to this size are never interleaved with another worker's
_LIMIT = 2048         # longer strings (paths, queries, user agents, causes) are cut in the log
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_escape = json.encoder.encode_basestring  # the C encoder: quotes and escapes a str


def request_id(incoming: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a short token of safe characters, else a new id."""
    if incoming is not None and _SANE_ID.fullmatch(incoming):
        return incoming
    return os.urandom(8).hex()


def _string(value: str | None) -> str:
    if value is None:
        return "null"
    return _escape(value if len(value) <= _LIMIT else value[:_LIMIT])


class AccessLogSink:
    """A buffered line writer onto a file descriptor (stderr by default).

    Flushes write whole lines, at most ``_ATOMIC_WRITE`` bytes at a time where lines allow, so
    lines of several workers sharing one pipe never interleave.
    """

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
        lines, self._lines, self._size = self._lines, [], 0
        chunk: list[bytes] = []
        size = 0
        try:
            for line in lines:
                data = line.encode("utf-8", "replace")
                if chunk and size + len(data) > _ATOMIC_WRITE:
                    os.write(self._fd, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(data)
                size += len(data)
            if chunk:
                os.write(self._fd, b"".join(chunk))
        except OSError:
            pass


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp access logger; ``logger`` is an AccessLogSink (or a logging.Logger in tests)."""

    def __init__(self, logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._clock = UtcClock()

    def log(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        status = request.get(OUTCOME_STATUS) or response.status
        sent = request.get(BODY_BYTES)
        if sent is None:
            body = response.body if isinstance(response, Response) else None
            sent = len(body) if isinstance(body, bytes) and request.method != "HEAD" else 0
        started = request.get(STARTED)
        seconds = time.perf_counter() - started if started is not None else time_taken
        self.log_line(request.get(REQUEST_ID) or request_id(request.headers.get("X-Request-Id")),
                      request.method, request.path, request.rel_url.raw_query_string, status, sent, seconds,
                      request.remote, request.headers.get("User-Agent"), request.get(UPSTREAM),
                      request.get(CACHE_STATUS), request.get(ERROR_CODE), request.get(CAUSE))

    def log_line(self, request_id: str, method: str, path: str, query: str | None, status: int, body_bytes: int,
                 seconds: float, remote: str | None, user_agent: str | None, upstream: str | None,
                 cache: str | None, error: str | None, cause: str | None) -> None:
        """The line for one request; also used for answers replayed without request objects."""
        esc = _escape  # short values Wharf or the parser bounded; client strings go through _string
        path_json = _string(path)
        line = (f'{{"time":"{self._clock.format(time.time())}","level":"info","logger":"wharf.access",'
                f'"message":"{method} {path_json[1:-1]} {status}",'
                f'"request_id":{esc(request_id)},"method":"{method}","path":{path_json},'
                f'"query":{_string(query) if query else "null"},"status":{status},"bytes":{body_bytes},'
                f'"duration_ms":{seconds * 1000:.3f},"remote":{"null" if remote is None else esc(remote)},'
                f'"user_agent":{"null" if user_agent is None else _string(user_agent)},'
                f'"upstream":{"null" if upstream is None else esc(upstream)},'
                f'"cache":{"null" if cache is None else esc(cache)},'
                f'"error":{"null" if error is None else esc(error)},'
                f'"cause":{"null" if cause is None else _string(cause)}}}')
        if isinstance(self.logger, AccessLogSink):
            self.logger.write(line + "\n")
        else:
            self.logger.info(line)

    @property
    def enabled(self) -> bool:
        return True
