"""One structured (JSON) access log line per request, with the cache status. Never logs headers."""

from __future__ import annotations

import json
import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from proxy.http.keys import CACHE_STATUS, ERROR_CODE


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(json.dumps({
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "bytes": response.body_length,
            "ms": round(time * 1000, 2),
            "cache": request.get(CACHE_STATUS, "-"),
            "error": request.get(ERROR_CODE),
            "remote": request.remote,
        }, separators=(",", ":")))
