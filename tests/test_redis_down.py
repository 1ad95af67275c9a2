"""Redis is an optimisation, never a dependency: when it goes away Wharf coordinates through its
own store, keeps serving and filling, says so once in the log, in /readyz and in /metrics, and
uses Redis again by itself when it comes back. A hung Redis costs a request at most
``redis.timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from support.images import MANIFEST_ACCEPT, make_image
from support.servers import free_port, require_binary

REPO = "team/app"
RETRY = 0.2  # redis.retry_seconds in these tests: how often Wharf checks whether Redis is back


class Redis:
    """A redis-server of this test's own, on a fixed port, so that it can be killed and restarted."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [require_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            assert time.monotonic() < deadline and self.process.poll() is None, "redis-server did not start"
            time.sleep(0.05)

    def _answers(self) -> bool:
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def keys(self, pattern: str) -> list[bytes]:
        client = aioredis.from_url(self.url)
        try:
            return [key async for key in client.scan_iter(match=pattern)]
        finally:
            await client.aclose()


@pytest.fixture
def own_redis(tmp_path):
    server = Redis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
        server.kill()


async def _pull(wharf, name: str, image, tag: str) -> None:
    """A whole pull by tag: manifest, then config and layers; every answer 200 and byte-exact."""
    resp = await wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200, await resp.text()
    assert await resp.read() == image.manifest
    for digest, data in image.blobs.items():
        resp = await wharf.client.get(f"/v2/{name}/blobs/{digest}")
        assert resp.status == 200, await resp.text()
        assert await resp.read() == data


async def _until(condition, what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


async def _readyz(wharf) -> tuple[int, dict]:
    resp = await wharf.client.get("/readyz")
    return resp.status, await resp.json()


async def _degraded_gauge(wharf) -> str:
    text = await (await wharf.client.get("/metrics")).text()
    return next((line for line in text.splitlines() if line.startswith("wharf_shared_cache_degraded ")), "absent")


def _shared_log(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "wharf.shared"]


async def test_redis_going_away_and_coming_back(make_wharf, fake_upstream, own_redis, caplog):
    caplog.set_level(logging.INFO)
    fake = await fake_upstream()
    images = {tag: make_image(f"redis-down-{tag}", (2000, 3000)) for tag in ("warm", "cold", "later")}
    for tag, image in images.items():
        fake.add_image(REPO, image, tag=tag)
    wharf = await make_wharf(fake.url, redis={"url": own_redis.url, "retry_seconds": RETRY})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    await _pull(wharf, name, images["warm"], "warm")
    assert await own_redis.keys("*fresh:*:warm")  # Wharf shares tag freshness through Redis
    assert await _degraded_gauge(wharf) == "wharf_shared_cache_degraded 0.0"

    own_redis.kill()
    for _ in range(3):
        await _pull(wharf, name, images["warm"], "warm")      # cached: still served
    await _pull(wharf, name, images["cold"], "cold")          # not cached: filled, served
    await _pull(wharf, name, images["cold"], "cold")          # and now cached
    assert fake.count("GET", fake.manifest_path(REPO, "cold")) == 1, "tag freshness is still remembered"
    missing = await wharf.client.get(f"/v2/{name}/manifests/nope")
    assert missing.status == 404 and (await missing.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    status, body = await _readyz(wharf)
    assert status == 200 and body["status"] == "ready" and "redis" in body["degraded"][0]
    assert await _degraded_gauge(wharf) == "wharf_shared_cache_degraded 1.0"
    warnings = _shared_log(caplog)
    assert len(warnings) == 1 and "redis does not answer" in warnings[0].getMessage(), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]

    own_redis.start()  # empty: what was learnt meanwhile stays local

    async def recovered() -> bool:
        return (await _readyz(wharf)) == (200, {"status": "ready"})

    await _until(recovered, "Wharf uses Redis again")
    assert await _degraded_gauge(wharf) == "wharf_shared_cache_degraded 0.0"
    await _pull(wharf, name, images["later"], "later")
    assert await own_redis.keys("*fresh:*:later"), "Wharf shares through Redis again"
    await _pull(wharf, name, images["warm"], "warm")
    messages = [r.getMessage() for r in _shared_log(caplog)]
    assert len(messages) == 2 and "redis answers again" in messages[1], messages


async def test_a_wharf_started_while_redis_is_down_serves_and_picks_redis_up(make_wharf, fake_upstream, tmp_path):
    server = Redis(tmp_path)  # not started yet
    fake = await fake_upstream()
    image = make_image("redis-absent", (1000,))
    fake.add_image(REPO, image, tag="v1")
    wharf = await make_wharf(fake.url, redis={"url": server.url, "retry_seconds": RETRY})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    try:
        await _pull(wharf, name, image, "v1")
        assert (await _readyz(wharf))[1]["degraded"]
        server.start()

        async def recovered() -> bool:
            return (await _readyz(wharf)) == (200, {"status": "ready"})

        await _until(recovered, "Wharf uses Redis once it is there")
    finally:
        server.kill()


async def test_a_hung_redis_does_not_hang_pulls(make_wharf, fake_upstream, own_redis):
    """Redis accepts connections but never answers (SIGSTOP): every operation gives up after
    ``redis.timeout`` and Wharf goes on locally, so pulls finish well within a client's patience."""
    fake = await fake_upstream()
    images = {tag: make_image(f"redis-hung-{tag}", (1000,)) for tag in ("warm", "cold")}
    for tag, image in images.items():
        fake.add_image(REPO, image, tag=tag)
    wharf = await make_wharf(fake.url, redis={"url": own_redis.url, "timeout": 0.2, "retry_seconds": RETRY})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    await _pull(wharf, name, images["warm"], "warm")
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        # aiocache's own default is 5 s per operation, and a pull makes several: a client that
        # gives up after 4 s sees the difference
        patience = aiohttp.ClientTimeout(total=4)
        for tag in ("cold", "warm"):
            resp = await wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT},
                                          timeout=patience)
            assert resp.status == 200 and await resp.read() == images[tag].manifest
            digest = images[tag].layers[0].digest
            resp = await wharf.client.get(f"/v2/{name}/blobs/{digest}", timeout=patience)
            assert resp.status == 200 and await resp.read() == images[tag].layers[0].data
        status, body = await _readyz(wharf)
        assert status == 200 and body["degraded"]
    finally:
        own_redis.process.send_signal(signal.SIGCONT)


async def test_one_slow_redis_answer_is_not_an_outage(make_wharf, fake_upstream, own_redis):
    """Redis stalls once for longer than ``redis.timeout`` but less than two (a busy machine): the
    operation is tried again and answered, so what it records is still shared with the other
    replicas, and nothing reports Redis as down."""
    fake = await fake_upstream()
    timeout = 0.5
    first = await make_wharf(fake.url, redis={"url": own_redis.url, "timeout": timeout, "retry_seconds": 30})
    second = await make_wharf(fake.url, redis={"url": own_redis.url, "timeout": timeout, "retry_seconds": 30})
    name = f"{first.upstream_name(fake.url)}/{REPO}"
    assert (await _readyz(first))[0] == 200  # both connected to Redis
    assert (await _readyz(second))[0] == 200
    own_redis.process.send_signal(signal.SIGSTOP)
    asyncio.get_running_loop().call_later(1.5 * timeout, own_redis.process.send_signal, signal.SIGCONT)
    assert (await first.client.get(f"/v2/{name}/manifests/missing")).status == 404
    assert (await _readyz(first))[1].get("degraded") is None
    assert await _degraded_gauge(first) == "wharf_shared_cache_degraded 0.0"
    # the negative answer reached Redis: the other replica does not ask upstream again
    assert (await second.client.get(f"/v2/{name}/manifests/missing")).status == 404
    assert fake.count(path=fake.manifest_path(REPO, "missing")) == 1
