"""What operators read: `wharf serve`'s stderr is one JSON object per line, every request is logged
and counted as what it came to (499 when the client hung up, the upstream failure when a fill
aborted), debug lines say what Wharf did upstream, and no secret is ever written."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Callable

import aiohttp
import pytest
import yaml

from support.accounts import basic
from support.fake_upstream import Fault
from support.images import MANIFEST_ACCEPT, make_image
from support.wharf_serve import add_admin

REPO = "team/app"
UPSTREAM = "fake.example"  # the name clients use for the fake upstream (path prefix or ns=)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running `wharf serve` whose stderr goes to a file; every line must be a JSON object."""

    def __init__(self, base: str, stderr: Path) -> None:
        self.base = base
        self.stderr = stderr

    def text(self) -> str:
        return self.stderr.read_text()

    def lines(self) -> list[dict]:
        parsed = []
        for raw in self.text().splitlines():
            try:
                doc = json.loads(raw)
            except ValueError:
                pytest.fail(f"a stderr line is not JSON: {raw!r}")
            assert isinstance(doc, dict), raw
            parsed.append(doc)
        return parsed

    async def line(self, predicate: Callable[[dict], bool], timeout: float = 15) -> dict:
        """The first line matching ``predicate``, waiting for it (the access log is flushed in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [doc for doc in self.lines() if predicate(doc)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no such line in:\n{self.text()}"
            await asyncio.sleep(0.1)

    async def access(self, path: str, **fields) -> dict:
        """The access line of the request for ``path`` (whose other fields equal ``fields``)."""
        return await self.line(lambda d: d.get("logger") == "wharf.access" and d.get("path") == path
                               and all(d.get(k) == v for k, v in fields.items()))


@asynccontextmanager
async def wharf_serve(tmp_path: Path, upstream_url: str, level: str = "info",
                      upstream_options: dict | None = None) -> AsyncIterator[Served]:
    """`wharf serve` (one worker) in front of ``upstream_url`` under the name ``UPSTREAM``."""
    port = _free_port()
    config = tmp_path / "wharf.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}", "workers": 1, "storage": {"root": str(tmp_path / "data")},
        "upstreams": [{"name": UPSTREAM, "url": upstream_url, **(upstream_options or {})}],
        "default_upstream": None, "log": {"level": level}}))
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(config)],
                                stdout=out, stderr=out)
    served = Served(f"http://127.0.0.1:{port}", stderr)
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(served.base + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, served.text()
                await asyncio.sleep(0.1)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)


async def _metrics(served: Served) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(served.base + "/metrics") as resp:
            return await resp.text()


def _no_traceback(served: Served) -> None:
    text = served.text()
    assert "Traceback" not in text and '"exception"' not in text, text


async def test_a_client_hanging_up_mid_fill_is_a_499_with_the_bytes_sent(fake_upstream, tmp_path):
    fake = await fake_upstream()
    digest = fake.add_blob(REPO, os.urandom(3_000_000))
    fake.fault(fake.blob_path(REPO, digest), Fault(bytes_per_second=1_000_000))
    path = f"/v2/{UPSTREAM}/{REPO}/blobs/{digest}"
    async with wharf_serve(tmp_path, fake.url) as served:
        async with aiohttp.ClientSession() as session:
            resp = await session.get(served.base + path)
            received = len(await resp.content.readexactly(100_000))
            resp.close()  # hang up mid-body
        line = await served.access(path)
        assert line["status"] == 499 and line["cause"] == "client closed the connection"
        assert received <= line["bytes"] < 3_000_000
        metrics = await _metrics(served)
        assert 'wharf_http_requests_total{method="GET",route="blob",status="499"} 1.0' in metrics
        assert 'status="500"' not in metrics
    _no_traceback(served)


async def test_a_client_hanging_up_on_a_stored_blob_is_a_499_with_the_bytes_sent(fake_upstream, tmp_path):
    fake = await fake_upstream()
    size = 48 * 2**20  # more than loopback's socket buffers hold: the send is cut short
    digest = fake.add_blob(REPO, os.urandom(size))
    path = f"/v2/{UPSTREAM}/{REPO}/blobs/{digest}"
    async with wharf_serve(tmp_path, fake.url) as served:
        async with aiohttp.ClientSession() as session:
            async with session.get(served.base + path) as resp:
                assert len(await resp.read()) == size  # the fill: now it is stored
            resp = await session.get(served.base + path, headers={"X-Request-Id": "hang-up-on-stored"})
            await resp.content.readexactly(100_000)
            resp.close()
        line = await served.access(path, request_id="hang-up-on-stored")
        assert line["status"] == 499 and line["cache"] == "hit"
        assert 100_000 <= line["bytes"] < size
        metrics = await _metrics(served)
        assert 'wharf_http_requests_total{method="GET",route="blob",status="499"} 1.0' in metrics
        assert 'wharf_http_requests_total{method="GET",route="blob",status="200"} 1.0' in metrics
    _no_traceback(served)


async def test_a_fill_aborted_on_a_digest_mismatch_is_logged_as_upstream_invalid(fake_upstream, tmp_path):
    fake = await fake_upstream()
    size = 7_000_000
    digest = fake.add_blob(REPO, os.urandom(size))
    fake.fault(fake.blob_path(REPO, digest), Fault(content=os.urandom(size), times=1))
    path = f"/v2/{UPSTREAM}/{REPO}/blobs/{digest}"
    async with wharf_serve(tmp_path, fake.url) as served:
        received = 0
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with session.get(served.base + path) as resp:
                    async for chunk in resp.content.iter_any():
                        received += len(chunk)
        line = await served.access(path)
        assert (line["status"], line["cache"], line["error"]) == (502, "aborted", "UNAVAILABLE")
        assert line["cause"] == "upstream sent content that does not match its digest"
        assert line["upstream"] == UPSTREAM
        assert received <= line["bytes"] < size and line["bytes"] > 0
        metrics = await _metrics(served)
        assert 'wharf_http_requests_total{method="GET",route="blob",status="502"} 1.0' in metrics
        assert 'status="500"' not in metrics
    _no_traceback(served)


def _parse_time(value: str) -> datetime:
    assert value.endswith("Z"), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


async def test_every_line_is_json_and_request_lines_say_who_asked_what_and_how_it_went(fake_upstream, tmp_path):
    fake = await fake_upstream()
    image = make_image("logged", (100,))
    fake.add_image(REPO, image, tag="v1")
    fake.fault(fake.manifest_path("team/down", "v1"), Fault(status=503))
    manifest = f"/v2/{REPO}/manifests/v1"
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    async with wharf_serve(tmp_path, fake.url) as served:
        async with aiohttp.ClientSession(headers={"User-Agent": "wharf-test/1.0"}) as session:
            for n in range(3):  # a miss, a hit, then a replayed hit, on one keep-alive connection
                async with session.get(f"{served.base}{manifest}?ns={UPSTREAM}",
                                       headers={"Accept": MANIFEST_ACCEPT, "X-Request-Id": f"ci-job-7.{n}"}) as resp:
                    assert resp.status == 200 and resp.headers["X-Request-Id"] == f"ci-job-7.{n}"
            async with session.get(f"{served.base}/v2/{UPSTREAM}/team/down/manifests/v1",
                                   headers={"X-Request-Id": 'not "sane" at all'}) as resp:
                assert resp.status == 503
                generated = resp.headers["X-Request-Id"]
                assert generated and "sane" not in generated
        lines = [await served.access(manifest, request_id=f"ci-job-7.{n}") for n in range(3)]
        failed = await served.access(f"/v2/{UPSTREAM}/team/down/manifests/v1")
    for doc in served.lines():
        assert {"time", "level", "logger", "message"} <= doc.keys(), doc
        assert before <= _parse_time(doc["time"]) <= datetime.now(timezone.utc)
    assert [line["cache"] for line in lines] == ["miss", "hit", "hit"]
    for line in lines:
        assert (line["level"], line["method"], line["status"]) == ("info", "GET", 200)
        assert line["bytes"] == len(image.manifest)
        assert line["query"] == f"ns={UPSTREAM}" and line["upstream"] == UPSTREAM
        assert line["user_agent"] == "wharf-test/1.0" and line["remote"] == "127.0.0.1"
        assert line["duration_ms"] >= 0 and line["error"] is None and line["cause"] is None
    assert failed["request_id"] == generated and failed["status"] == 503 and failed["upstream"] == UPSTREAM
    assert failed["error"] == "UNAVAILABLE" and failed["cause"] == f"upstream {UPSTREAM} answered 503"
    assert failed["query"] is None
    startup = served.lines()[0]
    assert startup["logger"] == "wharf" and "serving on" in startup["message"]
    assert not [doc for doc in served.lines() if doc["level"] == "debug"], "debug lines at level info"


async def test_debug_lines_tell_what_happened_upstream_without_a_secret(fake_upstream, tmp_path):
    fake = await fake_upstream()
    bearer = fake.require_bearer(users={"alice": "alice-Pa55word", "robot": "robot-Pa55word"}, private={"team/private"})
    image = make_image("secret-logging", (200,))
    fake.add_image("team/private", image, tag="v1")
    alice = "Basic " + base64.b64encode(b"alice:alice-Pa55word").decode()
    async with wharf_serve(tmp_path, fake.url, level="debug",
                           upstream_options={"username": "robot", "password": "robot-Pa55word"}) as served:
        async with aiohttp.ClientSession() as session:
            # docker login + pull: Basic at /token, then Wharf's token
            async with session.get(f"{served.base}/token", headers={"Authorization": alice}) as resp:
                wharf_token = (await resp.json())["token"]
            as_alice = {"Authorization": f"Bearer {wharf_token}", "Accept": MANIFEST_ACCEPT}
            base = f"{served.base}/v2/{UPSTREAM}/team/private"
            async with session.get(f"{base}/manifests/v1", headers=as_alice) as resp:
                assert resp.status == 200
            async with session.get(f"{base}/blobs/{image.layers[0].digest}", headers=as_alice) as resp:
                assert await resp.read() == image.layers[0].data
            # anonymous: the configured robot account goes upstream
            async with session.get(f"{base}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT}) as resp:
                assert resp.status == 200
        blob_line = await served.access(f"/v2/{UPSTREAM}/team/private/blobs/{image.layers[0].digest}")
        await served.line(lambda d: d.get("logger") == "wharf.fill" and "finished" in d["message"])
    lines = served.lines()
    upstream = [d for d in lines if d["logger"] == "wharf.upstream" and "url" in d]
    assert {(d["method"], d["status"]) for d in upstream} >= {("GET", 401), ("GET", 200)}
    assert all(d["level"] == "debug" and d["duration_ms"] >= 0 and d["upstream"] == UPSTREAM for d in upstream)
    tokens = [d for d in lines if d["logger"] == "wharf.upstream" and "realm" in d]
    assert tokens and {d["credential"] for d in tokens} == {"basic"}
    assert {d["scope"] for d in tokens} == {"", "repository:team/private:pull"}  # alice's login, then pulls
    assert all(d["status"] == 200 for d in tokens)
    assert any(d["logger"] == "wharf.cache" and d["result"] == "miss" for d in lines)
    layer = image.layers[0].digest
    fill = [d for d in lines if d["logger"] == "wharf.fill" and d["digest"] == layer]
    assert len(fill) == 2 and fill[0]["message"].startswith(f"fill of {layer} started")
    assert fill[1]["message"] == f"fill of {layer} finished: stored" and fill[1]["bytes"] == len(image.layers[0].data)
    assert fill[-1]["request_id"] == blob_line["request_id"], "a fill's lines carry its request's id"
    text = served.text()
    secrets = ["alice-Pa55word", "robot-Pa55word", wharf_token, *bearer.tokens,
               base64.b64encode(b"alice:alice-Pa55word").decode(), base64.b64encode(b"robot:robot-Pa55word").decode()]
    for secret in secrets:
        assert secret not in text, f"a secret is in the log: {secret[:6]}..."
    assert "Authorization" not in text and "Bearer " not in text and "Basic " not in text


def test_log_level_is_one_of_the_named_levels():
    from proxy.config import ConfigError, config_from_dict

    assert config_from_dict({"log": {"level": "WARN"}}).log.level == "warning"
    assert config_from_dict({"log": {"level": "Debug"}}).log.level == "debug"
    with pytest.raises(ConfigError, match="log.level"):
        config_from_dict({"log": {"level": "verbose"}})


async def test_a_pusher_hanging_up_mid_body_is_a_499_without_a_traceback(tmp_path):
    async with wharf_serve(tmp_path, "http://127.0.0.1:9") as served:
        authorization = basic(*add_admin(served.base, tmp_path / "wharf.yaml"))
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{served.base}/v2/team/pushed/blobs/uploads/",
                                    headers={"Authorization": authorization}) as resp:
                assert resp.status == 202
                location = resp.headers["Location"]
        path = location.split(served.base, 1)[-1]
        reader, writer = await asyncio.open_connection("127.0.0.1", int(served.base.rsplit(":", 1)[1]))
        writer.write(f"PATCH {path} HTTP/1.1\r\nHost: wharf\r\nContent-Type: application/octet-stream\r\n"
                     f"Authorization: {authorization}\r\n"
                     f"Content-Length: 1000000\r\n\r\n".encode() + b"x" * 100_000)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()  # hang up with 900,000 bytes still to send
        line = await served.access(path.split("?")[0], method="PATCH")
        assert line["status"] == 499 and line["cause"] == "client closed the connection"
        metrics = await _metrics(served)
        assert 'route="upload_chunk",status="499"} 1.0' in metrics and 'status="500"' not in metrics
    _no_traceback(served)


def test_a_traceback_is_one_json_line_with_the_request_id():
    import io
    import logging

    from proxy.config import LogConfig
    from proxy.logs import REQUEST_ID, setup_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(LogConfig(level="debug"), stream)
        context = REQUEST_ID.set("req-42")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("wharf.http").exception("unhandled error on %s", "GET /v2/", extra={"route": "blob"})
        finally:
            REQUEST_ID.reset(context)
        logging.getLogger("wharf.cache").debug("cache tag: hit")
        logging.getLogger("aiohttp.client").debug("a library's debug line")
    finally:
        root.handlers[:], root.level = saved
        logging.getLogger("wharf").setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2, "wharf's debug lines only, not every library's"
    error, debug = lines
    assert (error["level"], error["logger"], error["message"]) == ("error", "wharf.http", "unhandled error on GET /v2/")
    assert error["request_id"] == "req-42" and error["route"] == "blob"
    assert error["exception"].startswith("Traceback") and "ValueError: boom" in error["exception"]
    assert debug["level"] == "debug" and "request_id" not in debug


async def test_the_access_sink_writes_whole_lines_that_other_workers_cannot_split(monkeypatch):
    from proxy.http import accesslog

    writes: list[bytes] = []
    monkeypatch.setattr(accesslog.os, "write", lambda fd, data: writes.append(data) or len(data))
    sink = accesslog.AccessLogSink(fd=99)
    lines = [json.dumps({"n": n, "pad": "x" * (n * 37 % 1500)}) + "\n" for n in range(200)]
    for line in lines:  # buffered: flushed when 64 KiB are waiting
        sink.write(line)
    assert writes, "nothing flushed"
    sink.flush()
    assert b"".join(writes).decode() == "".join(lines)
    assert all(chunk.endswith(b"\n") and len(chunk) <= 4096 for chunk in writes)  # PIPE_BUF: atomic on a pipe


async def test_replayed_answers_carry_and_log_the_request_id(tmp_path, fake_upstream, caplog):
    import logging

    from conftest import WharfTestServer
    from proxy.app import create_app
    from proxy.config import config_from_dict
    from proxy.http.accesslog import JsonAccessLogger

    fake = await fake_upstream()
    image = make_image("replay-id", (100,))
    fake.add_image(REPO, image, tag="v1")
    app = create_app(config_from_dict({"storage": {"root": str(tmp_path / "w")},
                                       "upstreams": [{"name": UPSTREAM, "url": fake.url}]}))
    handled = []

    async def record(request, response) -> None:  # only what the application answers
        handled.append(request.path)

    app.on_response_prepare.append(record)
    server = WharfTestServer(app)
    await server.start_server(access_log=logging.getLogger("wharf.access"), access_log_class=JsonAccessLogger)
    caplog.set_level(logging.INFO, logger="wharf.access")
    path = f"/v2/{UPSTREAM}/{REPO}/manifests/v1"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:  # one connection
            ids = []
            for n in range(4):
                headers = {"Accept": MANIFEST_ACCEPT, **({"X-Request-Id": f"job-{n}"} if n < 3 else {})}
                async with session.get(str(server.make_url(path)), headers=headers) as resp:
                    assert resp.status == 200 and await resp.read() == image.manifest
                    ids.append(resp.headers["X-Request-Id"])
    finally:
        await server.close()
    assert len(handled) == 2, "the third and fourth answers were not replayed"
    assert ids[:3] == ["job-0", "job-1", "job-2"] and len(ids[3]) == 16 and ids[3] not in ids[:3]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "wharf.access"]
    assert [(d["request_id"], d["cache"], d["upstream"]) for d in lines] == [
        ("job-0", "miss", UPSTREAM), ("job-1", "hit", UPSTREAM), ("job-2", "hit", UPSTREAM), (ids[3], "hit", UPSTREAM)]
    assert all({"time", "level", "logger", "message", "query", "user_agent"} <= d.keys() for d in lines)
