"""Replayed hits: a repeated public manifest hit is answered from remembered bytes.

Every answer is checked on the wire against what the application itself sends for the same
request (a ``Connection: close`` request always goes through the application), so replaying is
invisible to clients except in speed; ``wharf.seen`` lists only what the application handled.
"""

from __future__ import annotations

import asyncio
import json
import logging

from yarl import URL

from support.fake_upstream import Fault
from support.images import MANIFEST_ACCEPT, make_image, push_image

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
REPLAYING = {"replay": True, "hot_manifests": True, "sendfile": True}  # whatever TEST_FAST_PATHS says


class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends request bytes as given and reads whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> "RawConnection":
        parsed = URL(url)
        reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
        return cls(reader, writer, f"{parsed.host}:{parsed.port}")

    def request(self, method: str, path: str, accept: str | None = DOCKER_V2, extra: str = "",
                version: str = "1.1") -> bytes:
        accept_line = f"Accept: {accept}\r\n" if accept else ""
        return f"{method} {path} HTTP/{version}\r\nHost: {self.host}\r\n{accept_line}{extra}\r\n".encode()

    def send(self, *requests: bytes) -> None:
        self.writer.write(b"".join(requests))  # one write: the server reads them together

    async def response(self, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = 0 if head_request else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return status, headers, body

    async def exchange(self, method: str, path: str, **kwargs) -> tuple[int, dict[str, str], bytes]:
        self.send(self.request(method, path, **kwargs))
        return await self.response(head_request=method == "HEAD")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _comparable(headers: dict[str, str]) -> dict[str, str]:
    """The headers that must be equal; every answer has its own Date and request id."""
    return {k: v for k, v in headers.items() if k not in ("date", "connection", "x-request-id")}


async def _application_answer(url: str, method: str, path: str, accept: str = DOCKER_V2):
    """What the application answers: ``Connection: close`` requests are never replayed."""
    conn = await RawConnection.open(url)
    try:
        status, headers, body = await conn.exchange(method, path, accept=accept, extra="Connection: close\r\n")
    finally:
        await conn.close()
    return status, _comparable(headers), body


async def _cached_image(make_wharf, registry_upstream, repo_name, **overrides):
    image = make_image("replay", (300,))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    wharf = await make_wharf(registry_upstream, **{"fast_paths": REPLAYING, **overrides})
    name = f"{wharf.upstream_name(registry_upstream)}/{repo_name}"
    return wharf, image, name


async def _warm_connection(url: str, path: str, **kwargs) -> RawConnection:
    """A connection on which ``path`` was fetched three times: a miss, a hit, then a replay."""
    conn = await RawConnection.open(url)
    for _ in range(3):
        assert (await conn.exchange("GET", path, **kwargs))[0] == 200
    return conn


async def test_repeated_hits_are_replayed_with_the_applications_exact_answer(make_wharf, registry_upstream,
                                                                          repo_name):
    wharf, image, name = await _cached_image(make_wharf, registry_upstream, repo_name)
    conn = await RawConnection.open(wharf.url)
    for reference in ("v1", image.digest):
        path = f"/v2/{name}/manifests/{reference}"
        answers = [await conn.exchange("GET", path) for _ in range(4)]
        handled = [seen for seen in wharf.seen if seen.path == path]
        assert len(handled) <= 2, "after a miss and a hit, the application is not asked again"
        expected = await _application_answer(wharf.url, "GET", path)
        assert expected[0] == 200 and expected[2] == image.manifest
        assert all((status, _comparable(headers), body) == expected for status, headers, body in answers)
        head = await conn.exchange("HEAD", path)
        assert (head[0], _comparable(head[1]), head[2]) == await _application_answer(wharf.url, "HEAD", path)
        assert head[1]["content-length"] == str(len(image.manifest))
        assert len([seen for seen in wharf.seen if seen.path == path and seen.method == "HEAD"]) == 1
    # ApacheBench speaks HTTP/1.0 with keep-alive; aiohttp answers those with Connection: keep-alive
    handled = len(wharf.seen)
    conn.send(conn.request("HEAD", path, version="1.0", extra="Connection: Keep-Alive\r\n"))
    status, headers, _ = await conn.response(head_request=True)
    assert status == 200 and headers["connection"] == "keep-alive" and len(wharf.seen) == handled
    assert (await conn.exchange("GET", path))[2] == image.manifest
    await conn.close()
    metrics = await (await wharf.client.get("/metrics")).text()
    assert 'wharf_http_requests_total{method="GET",route="manifest",status="200"} 11.0' in metrics
    assert 'wharf_http_requests_total{method="HEAD",route="manifest_head",status="200"} 5.0' in metrics


async def test_another_accept_or_query_is_decided_by_the_application(make_wharf, registry_upstream, repo_name):
    wharf, image, name = await _cached_image(make_wharf, registry_upstream, repo_name)
    path = f"/v2/{name}/manifests/{image.digest}"
    conn = await _warm_connection(wharf.url, path)
    before = len(wharf.seen)
    status, headers, _ = await conn.exchange("GET", path, accept="application/vnd.oci.image.index.v1+json")
    assert status == 200 and headers["content-type"] == DOCKER_V2  # by digest, whatever the Accept
    upstream = wharf.upstream_name(registry_upstream)
    status, headers, _ = await conn.exchange("GET", f"/v2/{repo_name}/manifests/{image.digest}?ns={upstream}")
    assert status == 200 and headers["oci-namespace"] == upstream
    assert len(wharf.seen) == before + 2
    await conn.close()


async def test_pipelined_requests_are_answered_in_order(make_wharf, registry_upstream, repo_name):
    wharf, image, name = await _cached_image(make_wharf, registry_upstream, repo_name)
    path = f"/v2/{name}/manifests/v1"
    conn = await _warm_connection(wharf.url, path)
    missing = f"/v2/{name}/blobs/sha256:{'0' * 64}"
    conn.send(conn.request("GET", path), conn.request("GET", missing), conn.request("HEAD", path),
              conn.request("GET", path))
    answers = [await conn.response(), await conn.response(), await conn.response(head_request=True),
               await conn.response()]
    assert [status for status, _, _ in answers] == [200, 404, 200, 200]
    assert json.loads(answers[1][2])["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert answers[0][2] == answers[3][2] == image.manifest and answers[2][2] == b""
    assert (await conn.exchange("GET", path))[2] == image.manifest  # still usable afterwards
    await conn.close()


async def test_tag_answers_stop_when_the_tag_goes_stale(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("stale", (200,))
    fake.add_image("team/app", image, tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options={"tag_ttl": 1}, fast_paths=REPLAYING)
    path = f"/v2/{wharf.upstream_name(fake.url)}/team/app/manifests/1.0"
    conn = await RawConnection.open(wharf.url)
    for _ in range(5):
        assert (await conn.exchange("GET", path, accept=MANIFEST_ACCEPT))[0] == 200
    manifest_path = fake.manifest_path("team/app", "1.0")
    assert fake.count(path=manifest_path) == 1
    newer = make_image("stale-newer", (210,))
    fake.add_image("team/app", newer, tag="1.0")
    await asyncio.sleep(1.2)
    status, headers, body = await conn.exchange("GET", path, accept=MANIFEST_ACCEPT)
    assert status == 200 and body == newer.manifest and headers["docker-content-digest"] == newer.digest
    assert fake.count("HEAD", manifest_path) == 1
    await conn.close()


async def test_private_content_is_never_replayed(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("private", (200,))
    fake.add_image("team/secret", image, tag="1.0")
    fake.require_bearer(users={"alice": "pw"}, private={"team/secret"})
    wharf = await make_wharf(fake.url, fast_paths=REPLAYING)
    path = f"/v2/{wharf.upstream_name(fake.url)}/team/secret/manifests/{image.digest}"
    conn = await _warm_connection(wharf.url, path, extra="Authorization: Basic YWxpY2U6cHc=\r\n")
    status, _, body = await conn.exchange("GET", path)
    assert status == 401 and json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    await conn.close()


async def test_a_request_with_a_body_or_closing_goes_to_the_application(make_wharf, registry_upstream, repo_name):
    wharf, image, name = await _cached_image(make_wharf, registry_upstream, repo_name)
    path = f"/v2/{name}/manifests/v1"
    conn = await _warm_connection(wharf.url, path)
    before = len(wharf.seen)
    conn.send(conn.request("GET", path, extra="Content-Length: 2\r\n") + b"{}")
    status, _, body = await conn.response()
    assert status == 200 and body == image.manifest
    status, headers, _ = await conn.exchange("GET", path, extra="Connection: close\r\n")
    assert status == 200 and headers.get("connection") == "close"
    assert len(wharf.seen) == before + 2
    await conn.close()


async def test_replayed_requests_are_logged_like_others(tmp_path, registry_upstream, repo_name, caplog):
    from conftest import WharfTestServer
    from proxy.app import create_app
    from proxy.config import config_from_dict
    from proxy.http.accesslog import JsonAccessLogger

    image = make_image("replay-log", (100,))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    upstream = registry_upstream.split("://", 1)[1]
    app = create_app(config_from_dict({"storage": {"root": str(tmp_path / "w")},
                                       "upstreams": [{"name": upstream, "url": registry_upstream}]}))
    server = WharfTestServer(app)
    await server.start_server(access_log=logging.getLogger("wharf.access"), access_log_class=JsonAccessLogger)
    caplog.set_level(logging.INFO, logger="wharf.access")
    try:
        conn = await RawConnection.open(str(server.make_url("/")))
        path = f"/v2/{upstream}/{repo_name}/manifests/v1"
        for _ in range(3):
            await conn.exchange("GET", path)
        await conn.exchange("HEAD", path)
        await conn.close()
    finally:
        await server.close()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "wharf.access"]
    assert [(line["method"], line["cache"], line["bytes"]) for line in lines] == [
        ("GET", "miss", len(image.manifest)), ("GET", "hit", len(image.manifest)),
        ("GET", "hit", len(image.manifest)), ("HEAD", "hit", 0)]
    assert all(line["path"] == path and line["status"] == 200 and line["remote"] == "127.0.0.1" for line in lines)
