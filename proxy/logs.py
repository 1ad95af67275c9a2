"""Logging: every line on stderr is one JSON object, in the shape the access log writes too.

Rules:
- every line has ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger`` and ``message``;
  a line written while a request is handled (or by work it started, such as a fill) adds that
  request's ``request_id``; fields given as ``extra={...}`` follow; a traceback is one string
  in ``exception``;
- ``log.level`` applies to Wharf's own loggers (``wharf.*``); other libraries log at INFO and
  above (WARNING and above when Wharf's level is higher), so ``debug`` means Wharf's debug lines;
- debug lines that cost something to build are guarded by ``isEnabledFor(DEBUG)``;
- nothing logs a header but ``User-Agent`` and ``X-Request-Id``, a token or a password.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import IO

from proxy.config import LogConfig

# the id of the request being handled; tasks a request starts inherit it (asyncio copies context)
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("wharf_request_id", default=None)

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


class UtcClock:
    """ISO 8601 UTC timestamps with milliseconds; each second's prefix is formatted once."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, now: float) -> str:
        second, millis = divmod(int(now * 1000), 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLIS[millis]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, extras, exception."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = UtcClock()

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {"time": self._clock.format(record.created), "level": record.levelname.lower(),
                                  "logger": record.name, "message": record.getMessage()}
        request_id = REQUEST_ID.get()
        if request_id is not None:
            doc["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def setup_logging(config: LogConfig, stream: IO[str] | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) as JSON lines, at ``config.level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = LEVELS[config.level]
    root.setLevel(max(level, logging.INFO))
    logging.getLogger("wharf").setLevel(level)
    logging.captureWarnings(True)
