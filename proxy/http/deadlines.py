"""Deadlines for slow clients: aiohttp's connection handler with the time limits it lacks.

aiohttp closes an idle keep-alive connection (``server.keepalive_timeout``) but waits forever for
a request head that trickles in, a body that stops, or a client that stops reading. Here:

- the head of a request (request line and headers) must arrive whole within ``header_timeout`` of
  its first byte; for a connection's first request, of connecting. More bytes do not extend it.
  While earlier requests of the connection are still being answered, a pipelined head waits its
  turn (its deadline restarts).
- a request body may pause at most ``body_idle_timeout`` between bytes: a slow upload that keeps
  moving is never cut. Time while Wharf itself has stopped reading (flow control) does not count.
- a client may stop reading an answer at most ``send_idle_timeout``: the answer's buffer stays
  full that long without shrinking. (Blobs sent with sendfile have their own stall limit,
  ``proxy.http.sendfile``.)

A connection past a deadline is closed without an answer (as Go's and nginx's servers do); a
handler still reading the stalled body gets ``RequestTimeout``. Each close is counted in
``wharf_connections_timed_out{stage}``. Timers are one handle per connection that is re-armed
only when it fires, so a busy keep-alive connection costs no timer per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD

from proxy.errors import RequestTimeout
from proxy.metrics import Metrics

log = logging.getLogger("wharf.http")


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The time limits a connection's client must keep, and where breaches are counted."""

    header: float
    body_idle: float
    send_idle: float
    metrics: Metrics


class _WatchedParser:
    """Wraps aiohttp's request parser: tells the handler when heads have been parsed."""

    def __init__(self, parser: Any, handler: "GuardedRequestHandler") -> None:
        self._parser = parser
        self._handler = handler

    def feed_data(self, data: bytes) -> tuple[list, bool, bytes]:
        messages, upgraded, tail = self._parser.feed_data(data)
        if messages:
            self._handler.heads_parsed(messages[-1][1])
        return messages, upgraded, tail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection handler enforcing ``Deadlines`` (its manager's ``deadlines``)."""

    # a subclass that wraps the parser itself calls heads_parsed from its wrapper (one call less per read)
    watch_parser = True

    def __init__(self, manager: Any, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._deadlines: Deadlines = manager.deadlines
        if self.watch_parser:
            self._parser = _WatchedParser(self._parser, self)
        self._head_due: float | None = None     # when the head being received must be whole
        self._head_timer: Any = None
        self._body: Any = None                  # the body of the last parsed request
        self._last_byte = 0.0                   # when a byte of that body last arrived
        self._body_timer: Any = None
        self._send_timer: Any = None
        self._unsent = 0                        # answer bytes buffered when the send timer was set

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._start_head(self._loop.time())

    def data_received(self, data: bytes) -> None:
        if data:
            body = self._body
            if body is not None and not body.is_eof():
                self._last_byte = self._loop.time()
            elif self._head_due is None:  # the first bytes of the next head
                self._body = None
                self._start_head(self._loop.time())
        super().data_received(data)

    def heads_parsed(self, last_body: Any) -> None:
        """Request heads are whole: no head deadline until the next one starts; watch the body."""
        self._head_due = None
        if last_body is EMPTY_PAYLOAD or last_body.is_eof():
            self._body = None
            return
        self._body = last_body
        self._last_byte = self._loop.time()
        if self._body_timer is None:
            self._body_timer = self._loop.call_at(self._last_byte + self._deadlines.body_idle,
                                                  self._check_body)

    def sheddable(self) -> bool:
        """Open but doing nothing for its client: idle between requests, or still receiving a head."""
        return self.transport is not None and not self._request_in_progress and not self._messages \
            and (self._body is None or self._body.is_eof())

    def shed(self) -> None:
        """Close this connection to make room for another (it must be ``sheddable``)."""
        self.force_close()

    # -- the head -------------------------------------------------------------------------------
    def _start_head(self, now: float) -> None:
        due = now + self._deadlines.header
        self._head_due = due
        if self._next_keepalive_close_time < due:  # a head under way is not an idle connection
            self._next_keepalive_close_time = due
        if self._head_timer is None:
            self._head_timer = self._loop.call_at(due, self._check_head)

    def _check_head(self) -> None:
        self._head_timer = None
        due = self._head_due
        if due is None or self.transport is None:
            return
        now = self._loop.time()
        if now < due:
            self._head_timer = self._loop.call_at(due, self._check_head)
        elif self._request_in_progress or self._messages:  # a pipelined head waits its turn
            self._head_due = None
            self._start_head(now)
        else:
            self._stalled("header")

    # -- the body -------------------------------------------------------------------------------
    def _check_body(self) -> None:
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            return
        now = self._loop.time()
        if self._reading_paused or self._buffer_paused:  # Wharf is not reading: not the client's stall
            self._last_byte = now
        due = self._last_byte + self._deadlines.body_idle
        if now < due:
            self._body_timer = self._loop.call_at(due, self._check_body)
            return
        body.set_exception(RequestTimeout(
            f"no byte of the request body for {self._deadlines.body_idle:g} s"))
        self._stalled("body")

    # -- the answer -----------------------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None and self.transport is not None:
            self._unsent = self.transport.get_write_buffer_size()
            self._send_timer = self._loop.call_later(self._deadlines.send_idle, self._check_send)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _check_send(self) -> None:
        """The buffer stayed full: cut the client unless it took some of it meanwhile."""
        self._send_timer = None
        transport = self.transport
        if transport is None or not self.writing_paused:
            return
        unsent = transport.get_write_buffer_size()
        if unsent < self._unsent:  # slow, but reading
            self._unsent = unsent
            self._send_timer = self._loop.call_later(self._deadlines.send_idle, self._check_send)
        else:
            self._stalled("send")

    # -------------------------------------------------------------------------------------------
    def _stalled(self, stage: str) -> None:
        self._deadlines.metrics.connections_timed_out.labels(stage).inc()
        log.debug("closing a connection from %s: the client stalled on the request's %s",
                  self.peername, stage)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._head_timer, self._body_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._send_timer = None
        self._head_due = self._body = None
        super().connection_lost(exc)


# the connection state of aiohttp's RequestHandler this module reads or sets (aiohttp 3.14)
_HANDLER_STATE = ("_parser", "_messages", "_request_in_progress", "_next_keepalive_close_time",
                  "_reading_paused", "_buffer_paused", "writing_paused", "force_close")


def deadlines_supported() -> bool:
    """Whether this aiohttp has the connection internals the deadlines rely on."""
    return all(hasattr(web.RequestHandler, name) for name in _HANDLER_STATE)
