"""Slow and greedy clients, over real sockets: request deadlines, the connection cap, the loop-lag metric.

Deadlines are set short here (about a second) so that a stalled client is cut while the test
waits; every wait on the wire is bounded (``_CLOSED_WITHIN``) so that a missing deadline fails
the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import yaml
from yarl import URL

_CLOSED_WITHIN = 10.0  # seconds a test waits for Wharf to close a stalled connection
FAST = {"header_timeout": 1, "body_idle_timeout": 1, "keepalive_timeout": 1}


class Conn:
    """One raw TCP connection to Wharf."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> "Conn":
        parsed = URL(url)
        reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
        return cls(reader, writer, f"{parsed.host}:{parsed.port}")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def get(self, path: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
        await self.send(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}\r\n".encode())
        return await self.response()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), _CLOSED_WITHIN)
        lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))),
                                      _CLOSED_WITHIN)
        return int(lines[0].split()[1]), headers, body

    async def closed_by_wharf(self) -> bytes:
        """Wait (bounded) until Wharf closes the connection; returns what it sent before closing."""
        return await asyncio.wait_for(self.reader.read(), _CLOSED_WITHIN)

    def close(self) -> None:
        self.writer.close()


async def _metrics(url: str) -> str:
    conn = await Conn.open(url)
    try:
        status, _, body = await conn.get("/metrics", "Connection: close\r\n")
    finally:
        conn.close()
    assert status == 200
    return body.decode()


def _sample(metrics: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _answered(url: str) -> None:
    """A normal client is answered on a new connection."""
    conn = await Conn.open(url)
    try:
        status, _, _ = await conn.get("/healthz")
        assert status == 200
    finally:
        conn.close()


# request heads ------------------------------------------------------------------------------------
async def test_heads_that_stall_or_trickle_are_cut_while_others_are_answered(make_wharf):
    wharf = await make_wharf(server=FAST | {"keepalive_timeout": 60})
    silent = await Conn.open(wharf.url)                      # connects, sends nothing
    stalled = await Conn.open(wharf.url)                     # half a head, then nothing
    await stalled.send(f"GET /v2/ HTTP/1.1\r\nHost: {stalled.host}\r\nAccept: ".encode())
    trickling = await Conn.open(wharf.url)                   # a header line every 0.2 s, for 6 s

    async def trickle() -> int:
        await trickling.send(b"GET /v2/ HTTP/1.1\r\n")
        for sent in range(30):
            await asyncio.sleep(0.2)
            if trickling.reader.at_eof():
                return sent
            try:
                await trickling.send(f"X-Slow-{sent}: x\r\n".encode())
            except ConnectionError:
                return sent
        return 30

    trickler = asyncio.ensure_future(trickle())
    await _answered(wharf.url)
    for conn in (silent, stalled, trickling):
        assert await conn.closed_by_wharf() == b""
    assert await trickler < 30, "trickling header lines must not extend the head's deadline"
    await _answered(wharf.url)
    metrics = await _metrics(wharf.url)
    assert _sample(metrics, 'wharf_connections_timed_out_total{stage="header"}') == 3


async def test_a_keep_alive_connection_gets_a_new_head_deadline_per_request(make_wharf):
    wharf = await make_wharf(server=FAST | {"keepalive_timeout": 60})
    conn = await Conn.open(wharf.url)
    for _ in range(3):  # three requests over more than the head deadline, each head sent whole
        assert (await conn.get("/healthz"))[0] == 200
        await asyncio.sleep(0.6)
    await conn.send(b"GET /v2/ HTTP/1.1\r\n")  # then one that stops half way
    assert await conn.closed_by_wharf() == b""


async def test_idle_keep_alive_connections_are_closed_after_keepalive_timeout(make_wharf):
    wharf = await make_wharf(server={"keepalive_timeout": 1, "header_timeout": 30})
    conn = await Conn.open(wharf.url)
    assert (await conn.get("/healthz"))[0] == 200
    assert await conn.closed_by_wharf() == b""


# request bodies -----------------------------------------------------------------------------------
def _pusher(wharf) -> str:
    """The header line that signs a push in as the test Wharf's admin."""
    return f"Authorization: {wharf.admin_headers['Authorization']}\r\n"


async def _start_upload(conn: Conn, repo: str, authorization: str) -> str:
    await conn.send(f"POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: {conn.host}\r\n{authorization}"
                    f"Content-Length: 0\r\n\r\n".encode())
    status, headers, _ = await conn.response()
    assert status == 202
    return headers["location"]


def _patch_head(conn: Conn, location: str, length: int, authorization: str) -> bytes:
    return (f"PATCH {location} HTTP/1.1\r\nHost: {conn.host}\r\nContent-Type: application/octet-stream\r\n"
            f"{authorization}Content-Length: {length}\r\n\r\n").encode()


async def test_a_stalled_upload_body_is_cut_and_a_slow_moving_one_completes(make_wharf, repo_name, caplog):
    wharf = await make_wharf(server=FAST | {"keepalive_timeout": 60})
    caplog.set_level(logging.DEBUG)
    stalled = await Conn.open(wharf.url)
    location = await _start_upload(stalled, repo_name, _pusher(wharf))
    await stalled.send(_patch_head(stalled, location, 1000, _pusher(wharf)) + b"x" * 100)
    assert await stalled.closed_by_wharf() == b""

    slow = await Conn.open(wharf.url)
    location = await _start_upload(slow, repo_name, _pusher(wharf))
    await slow.send(_patch_head(slow, location, 80, _pusher(wharf)))
    for _ in range(8):  # 8 × 10 bytes over 3.2 s, more than the body deadline, never 1 s apart
        await asyncio.sleep(0.4)
        await slow.send(b"y" * 10)
    status, headers, _ = await slow.response()
    assert status == 202 and headers["range"] == "0-79"
    slow.close()

    await _answered(wharf.url)
    metrics = await _metrics(wharf.url)
    assert _sample(metrics, 'wharf_connections_timed_out_total{stage="body"}') == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a stalled client is no error"


# answers the client does not read -----------------------------------------------------------------
async def test_a_client_that_stops_reading_is_cut(make_wharf):
    wharf = await make_wharf(server={"send_idle_timeout": 1})
    parsed = URL(wharf.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills quickly
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parsed.host, parsed.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    greedy = Conn(reader, writer, f"{parsed.host}:{parsed.port}")
    greedy.writer.write(f"GET /metrics HTTP/1.1\r\nHost: {greedy.host}\r\n\r\n".encode() * 3000)  # never read

    async def cut() -> float:
        for _ in range(100):
            await asyncio.sleep(0.1)
            seen = _sample(await _metrics(wharf.url), 'wharf_connections_timed_out_total{stage="send"}')
            if seen:
                return seen
        return 0.0

    assert await asyncio.wait_for(cut(), _CLOSED_WITHIN * 2) == 1
    greedy.writer.transport.abort()
    await _answered(wharf.url)


# the connection cap -------------------------------------------------------------------------------
async def test_at_the_cap_idle_and_half_sent_connections_make_room_for_new_clients(make_wharf):
    wharf = await make_wharf(server={"max_connections": 3})
    idle = await Conn.open(wharf.url)
    assert (await idle.get("/healthz"))[0] == 200                # then idle on keep-alive
    half_sent = [await Conn.open(wharf.url) for _ in range(2)]
    for conn in half_sent:
        await conn.send(b"GET /v2/ HTTP/1.1\r\n")
    await asyncio.sleep(0.1)  # let Wharf see all three
    newcomers = []
    for _ in range(3):  # each new client takes the place of the oldest that does nothing
        newcomers.append(await Conn.open(wharf.url))
        assert (await newcomers[-1].get("/healthz"))[0] == 200    # and stays open, idle
        await asyncio.sleep(0.05)
    for conn in (idle, *half_sent):
        assert await conn.closed_by_wharf() == b""
    metrics = await _metrics(wharf.url)
    assert _sample(metrics, "wharf_connections_shed_total") >= 3  # the metrics client sheds one more
    assert _sample(metrics, "wharf_connections_refused_total") == 0


async def test_over_the_cap_with_every_connection_at_work_new_ones_get_503(make_wharf, repo_name):
    wharf = await make_wharf(server={"max_connections": 3})
    uploading = []
    for _ in range(3):  # each in the middle of an upload's body: at work
        conn = await Conn.open(wharf.url)
        location = await _start_upload(conn, repo_name, _pusher(wharf))
        await conn.send(_patch_head(conn, location, 20, _pusher(wharf)) + b"x" * 10)
        uploading.append(conn)
    await asyncio.sleep(0.1)

    refused = await Conn.open(wharf.url)
    status, headers, body = await refused.get("/healthz")
    assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1"
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    assert await refused.closed_by_wharf() == b""
    silent = await Conn.open(wharf.url)  # refused even when it sends nothing
    assert (await silent.closed_by_wharf()).startswith(b"HTTP/1.1 503 ")

    for conn in uploading:  # the connections at work are unharmed
        await conn.send(b"y" * 10)
        status, headers, _ = await conn.response()
        assert status == 202 and headers["range"] == "0-19"
    status, _, body = await uploading[0].get("/metrics")
    assert _sample(body.decode(), "wharf_connections_refused_total") == 2
    assert _sample(body.decode(), "wharf_connections_open") == 3


# event-loop lag -----------------------------------------------------------------------------------
async def test_event_loop_lag_is_measured_in_metrics(make_wharf):
    wharf = await make_wharf()
    await asyncio.sleep(0.6)
    before = await _metrics(wharf.url)
    assert _sample(before, "wharf_event_loop_lag_seconds_count") >= 1
    assert _sample(before, "wharf_event_loop_lag_max_seconds") < 0.4
    time.sleep(0.6)  # this test shares Wharf's event loop: block it as a slow handler would
    await asyncio.sleep(0.6)
    after = await _metrics(wharf.url)
    assert _sample(after, "wharf_event_loop_lag_seconds_count") > _sample(before, "wharf_event_loop_lag_seconds_count")
    assert _sample(after, "wharf_event_loop_lag_max_seconds") >= 0.3
    assert _sample(after, 'wharf_event_loop_lag_seconds_bucket{le="0.25"}') < \
        _sample(after, 'wharf_event_loop_lag_seconds_bucket{le="0.5"}')


# the same through `wharf serve` (uvloop, config file and environment) -----------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_wharf_serve_sheds_half_sent_requests_and_answers_others(tmp_path):
    port = _free_port()
    config = tmp_path / "wharf.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}", "workers": 1, "storage": {"root": str(tmp_path / "data")},
        "upstreams": [], "default_upstream": None, "server": {"max_connections": 5}}))
    env = dict(os.environ, WHARF_SERVER__HEADER_TIMEOUT="1")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                await _answered(base)
                break
            except OSError:
                await asyncio.sleep(0.2)
        half_sent = [await Conn.open(base) for _ in range(5)]  # every place held
        for conn in half_sent:
            await conn.send(f"GET /v2/ HTTP/1.1\r\nHost: {conn.host}\r\nUser-Agent: slow".encode())
        await asyncio.sleep(0.2)
        await _answered(base)                              # in the place of the oldest
        for conn in half_sent:
            assert await conn.closed_by_wharf() == b""    # the others cut at the head deadline
        metrics = await _metrics(base)
        assert _sample(metrics, 'wharf_connections_timed_out_total{stage="header"}') == 4
        assert _sample(metrics, "wharf_connections_shed_total") == 1
        assert _sample(metrics, "wharf_connections_refused_total") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "Traceback" not in output


def test_max_connections_auto_leaves_descriptors_for_the_store_and_upstreams():
    from proxy.config import config_from_dict
    from proxy.http.admission import connection_cap

    config = config_from_dict({"server": {"max_connections": "auto"}})
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = connection_cap(config.server.max_connections)
    assert cap >= 64 and (soft == resource.RLIM_INFINITY or soft < 640 or 2 * cap + 512 <= soft)
    assert connection_cap(config_from_dict({"server": {"max_connections": 7}}).server.max_connections) == 7
