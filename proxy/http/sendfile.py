"""Stored blobs go out with the kernel's sendfile, also under uvloop (which has no loop.sendfile).

aiohttp's FileResponse falls back to read-and-write in Python when the loop cannot sendfile;
for large blobs that halves throughput. Here the body is sent by ``os.sendfile`` from a worker
thread on a duplicate of the connection's socket (so a connection closed meanwhile can never
redirect bytes to a reused descriptor), after the headers have left the transport's buffer.
A TLS connection never gets the raw socket: its bytes must go through the SSL transport, so
they take aiohttp's write path.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

_SMALL = 256 * 1024  # below this the Python path is as fast and needs no thread
_STALL_SECONDS = 60.0


class SendAborted(ConnectionResetError):
    """The client's connection broke, or it stopped reading, during a send; ``sent`` bytes had left."""

    def __init__(self, message: str, sent: int) -> None:
        super().__init__(message)
        self.sent = sent


def _sendfile_all(sock_fd: int, file_fd: int, offset: int, count: int) -> None:
    """Blocking: send ``count`` bytes of the file from ``offset``; waits while the socket is full.

    Owns both descriptors (duplicates made for it) and closes them, whatever happens to the
    request that asked for the send meanwhile. A client that hangs up or stops reading raises
    SendAborted with the bytes sent before.
    """
    done = 0
    try:
        poller = select.poll()
        poller.register(sock_fd, select.POLLOUT)
        while count > 0:
            try:
                sent = os.sendfile(sock_fd, file_fd, offset, count)
            except BlockingIOError:
                if not poller.poll(int(_STALL_SECONDS * 1000)):
                    raise SendAborted(f"client stopped reading for {_STALL_SECONDS:.0f}s", done) from None
                continue
            except ConnectionError as exc:
                raise SendAborted(f"connection closed during sendfile: {exc.strerror}", done) from None
            if sent == 0:
                raise SendAborted("connection closed during sendfile", done)
            offset += sent
            count -= sent
            done += sent
    finally:
        os.close(sock_fd)
        os.close(file_fd)


async def direct_socket(request: web.BaseRequest, writer) -> socket.socket | None:
    """Flush the headers onto the wire and return the connection's socket for direct sends.

    None when the transport has no socket or encrypts (TLS): the caller then writes through aiohttp.
    """
    transport = request.transport
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    writer.send_headers()
    await writer.drain()
    while transport.get_write_buffer_size():  # the headers must be on the wire first
        if transport.is_closing():
            raise ConnectionResetError("connection lost")
        await asyncio.sleep(0.0005)
    return sock


async def send_region(request: web.BaseRequest, executor: ThreadPoolExecutor, sock: socket.socket,
                      file_fd: int, offset: int, count: int) -> None:
    """Send a file region on the connection from a thread that works on duplicates of both
    descriptors, so neither can be closed and reused under it (a cancelled request included)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("connection lost")
    sock_fd = os.dup(sock.fileno())
    try:
        file_dup = os.dup(file_fd)
    except OSError:
        os.close(sock_fd)
        raise
    await asyncio.get_running_loop().run_in_executor(executor, _sendfile_all, sock_fd, file_dup, offset, count)


class SendfileResponse(web.FileResponse):
    """A FileResponse whose body is sent by ``os.sendfile`` in ``executor`` (None: aiohttp's own way)."""

    def __init__(self, path, executor: ThreadPoolExecutor | None, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self._executor = executor

    async def _sendfile(self, request: web.BaseRequest, fobj, offset: int, count: int):
        if self._executor is None or count < _SMALL or self.compression:
            return await super()._sendfile(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        sock = await direct_socket(request, writer)
        if sock is None:
            return await self._sendfile_fallback(writer, fobj, offset, count)
        await send_region(request, self._executor, sock, fobj.fileno(), offset, count)
        await web.StreamResponse.write_eof(self)
        return writer
