"""Replayed hits: remembered answers written to the socket as soon as a request is parsed.

A request that is the same as a remembered one (``proxy.http.replay``) in everything that
decides the answer is answered from those bytes when aiohttp's parser hands it over, without
building request and response objects: the hot path of a CI fleet pulling one tag.

Rules: replay only a keep-alive GET or HEAD without a body or upgrade; only while
nothing else on the connection is queued or running (answers stay in request order; after the
first request that goes through the application, the rest of that read does too); only while
the socket's send buffer is small (a client that does not read gets the application's flow
control); only while the client is within its request rate (``proxy.http.ratelimit``: the
replay is charged to it; a client over its rate is left to the application, which answers 429).
Replayed requests are counted, timed and logged like any other, and carry an
``X-Request-Id`` like any other answer. Connections keep the deadlines
of ``proxy.http.deadlines`` and the cap of ``proxy.http.admission`` whether or not they replay.
"""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD

from proxy.http.accesslog import JsonAccessLogger, request_id
from proxy.http.admission import Refusals, connection_cap
from proxy.http.deadlines import Deadlines, GuardedRequestHandler, deadlines_supported
from proxy.http.keys import CLIENT_LIMITS, CONFIG, METRICS, REPLAYS
from proxy.http.ratelimit import ClientLimiter, client_key
from proxy.http.replay import ReplayTable
from proxy.metrics import Metrics

log = logging.getLogger("wharf.http")
_MAX_SEND_BUFFER = 64 * 1024     # replay only while the client keeps reading
_REPLAYED_METHODS = frozenset(("GET", "HEAD"))
_REPLAYED_VERSIONS = frozenset((HttpVersion11, HttpVersion10))  # 1.0 only with keep-alive


class _Clock:
    """Status line and the headers aiohttp adds (Date, Server), the date formatted once a second.

    As aiohttp answers: an HTTP/1.0 keep-alive request (ApacheBench) gets an HTTP/1.0 status line
    and ``Connection: keep-alive``.
    """

    def __init__(self) -> None:
        self._second = 0
        self._tail11 = self._tail10 = b""

    def framing(self, version: Any) -> tuple[bytes, bytes]:
        now = int(time.time())
        if now != self._second:
            self._second = now
            tail = f"Date: {formatdate(now, usegmt=True)}\r\nServer: {SERVER_SOFTWARE}\r\n"
            self._tail11 = (tail + "\r\n").encode("latin-1")
            self._tail10 = (tail + "Connection: keep-alive\r\n\r\n").encode("latin-1")
        if version == HttpVersion11:
            return b"HTTP/1.1 200 OK\r\n", self._tail11
        return b"HTTP/1.0 200 OK\r\n", self._tail10


class _ReplayingParser:
    """Wraps aiohttp's request parser: replayable requests are answered and not passed on."""

    def __init__(self, parser: Any, protocol: "ReplayingRequestHandler") -> None:
        self._parser = parser
        self._protocol = protocol

    def feed_data(self, data: bytes) -> tuple[list, bool, bytes]:
        messages, upgraded, tail = self._parser.feed_data(data)
        if not messages:
            return messages, upgraded, tail
        protocol = self._protocol
        protocol.heads_parsed(messages[-1][1])  # the deadlines' watch (proxy.http.deadlines)
        for index, (message, payload) in enumerate(messages):
            if not protocol.replay(message, payload):
                return messages[index:], upgraded, tail
            self._parser.message_consumed()  # the parser counts messages in flight
        return [], upgraded, tail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


class ReplayingRequestHandler(GuardedRequestHandler):
    """aiohttp's connection handler (with deadlines), answering replayable requests itself."""

    watch_parser = False  # _ReplayingParser tells the deadlines about parsed heads
    def __init__(self, manager: "ReplayingServer", **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._parser = _ReplayingParser(self._parser, self)
        self._table = manager.replays
        self._metrics = manager.metrics
        self._limiter = manager.limiter if manager.limiter.enabled else None
        self._clock = manager.clock
        self._remote = "-"
        logger = self.access_logger
        self._line_logger = logger if self._logging_enabled and isinstance(logger, JsonAccessLogger) else None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "-"

    def _idle(self) -> bool:
        """Nothing of this connection's is queued or running: the next answer is the next written."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def replay(self, message: Any, payload: Any) -> bool:
        """Answer ``message`` from the table if every rule allows it; False leaves it to the application."""
        if message.method not in _REPLAYED_METHODS or payload is not EMPTY_PAYLOAD \
                or message.version not in _REPLAYED_VERSIONS or message.should_close or message.upgrade:
            return False
        transport = self.transport
        if transport is None or transport.is_closing() or not self._idle() \
                or transport.get_write_buffer_size() > _MAX_SEND_BUFFER:
            return False
        entry = self._table.get(message.path, tuple(message.headers.getall("Accept", ())),
                                message.headers.get("Authorization"))
        if entry is None:
            return False
        if self._limiter is not None and self._limiter.take(
                client_key(self._remote, message.headers.get("Authorization"))) is not None:
            return False  # over its rate: the application answers 429, as it does for every route
        started = time.perf_counter()
        head = message.method == "HEAD"
        headers = message.headers
        rid = request_id(headers.get("X-Request-Id"))
        status_line, tail = self._clock.framing(message.version)
        stamped = status_line + entry.head + b"X-Request-Id: " + rid.encode() + b"\r\n" + tail
        transport.write(stamped if head else stamped + entry.body)
        if entry.on_hit is not None and not head:
            entry.on_hit()
        if entry.on_pull is not None:
            entry.on_pull()
        self._keep_alive_from_now()
        seconds = time.perf_counter() - started
        self._metrics.observe_request(entry.route + "_head" if head else entry.route, message.method, 200, seconds)
        self._metrics.count_cache(entry.cache_kind, "hit")
        if self._line_logger is not None:
            url = message.url
            self._line_logger.log_line(rid, message.method, url.path, url.raw_query_string, 200,
                                       0 if head else len(entry.body), seconds, self._remote,
                                       headers.get("User-Agent"), entry.upstream, "hit", None, None)
        return True

    def _keep_alive_from_now(self) -> None:
        """A replayed request counts as activity: push the idle-connection timeout back."""
        if self._keepalive_timeout <= 0:
            return
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)


# the connection state of aiohttp's RequestHandler this module reads or sets (aiohttp 3.14)
_HANDLER_STATE = ("_waiter", "_messages", "_parser", "_keepalive_timeout", "_next_keepalive_close_time",
                  "_keepalive_handle", "_process_keepalive", "_logging_enabled", "access_logger")


def replay_supported() -> bool:
    """Whether this aiohttp has the connection internals replaying relies on."""
    return all(hasattr(web.RequestHandler, name) for name in _HANDLER_STATE) \
        and hasattr(HttpRequestParser, "message_consumed")


class ReplayingServer(web.Server):
    """aiohttp's low-level server whose connections replay remembered answers and keep deadlines.

    At ``max_connections`` open connections, a new one takes the place of the oldest idle or
    half-sent one; when every connection is at work, it is refused (``proxy.http.admission``).
    With an aiohttp whose connection internals differ, connections are plain aiohttp ones
    (every request goes through the application; no head, body or send deadlines) and a warning
    says so once.
    """

    def __init__(self, *args: Any, replays: ReplayTable, metrics: Metrics, deadlines: Deadlines,
                 limiter: ClientLimiter, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replays = replays
        self.metrics = metrics
        self.deadlines = deadlines
        self.limiter = limiter
        self.clock = _Clock()
        self.max_connections = max_connections
        self._refusals = Refusals(metrics.connections_refused.inc)
        metrics.connections_open.set_function(lambda: len(self._connections))

    def __call__(self) -> Any:
        if len(self._connections) >= self.max_connections and not self._shed_one():
            return self._refusals.protocol()
        if not _DEADLINES:
            return super().__call__()
        if not _SUPPORTED:
            return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)
        return ReplayingRequestHandler(self, loop=self._loop, **self._kwargs)


    def _shed_one(self) -> bool:
        """At the cap, close the oldest connection that is idle or still sending its head (as nginx
        reuses keep-alive connections): a new client is refused only when every one is at work."""
        for index, handler in enumerate(self._connections):
            if index >= _SHED_SCAN:
                break
            if isinstance(handler, GuardedRequestHandler) and handler.sheddable():
                handler.shed()
                self.metrics.connections_shed.inc()
                return True
        return False


_SHED_SCAN = 4096  # connections looked at, oldest first, for one to shed
_DEADLINES = deadlines_supported()
_SUPPORTED = _DEADLINES and replay_supported()
if not _SUPPORTED:
    log.warning("aiohttp %s lacks the connection internals replaying hits%s relies on; "
                "every request goes through the application", aiohttp.__version__,
                "" if _DEADLINES else " and request deadlines")


class ReplayingAppRunner(web.AppRunner):
    """aiohttp's AppRunner serving through a ReplayingServer fed by the app's table and metrics."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's startup and freezes it
        limits = self.app[CONFIG].server
        metrics = self.app[METRICS]
        deadlines = Deadlines(limits.header_timeout, limits.body_idle_timeout, limits.send_idle_timeout, metrics)
        kwargs = {**server._kwargs, "keepalive_timeout": limits.keepalive_timeout}
        return ReplayingServer(server.request_handler, request_factory=server.request_factory,
                               handler_cancellation=server.handler_cancellation, loop=server._loop,
                               replays=self.app[REPLAYS], metrics=metrics, deadlines=deadlines,
                               limiter=self.app[CLIENT_LIMITS], max_connections=connection_cap(limits.max_connections),
                               **kwargs)
