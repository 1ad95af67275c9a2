"""Attack: a hostile or broken upstream answering a tag list or a referrers list with an endless
body made Wharf read it all into memory; one that stalled mid-body (past ``read_timeout``) or
cut it short made Wharf answer ``500 internal error`` with a traceback. Those bodies are now
read up to a cap (``502``), and a broken one is ``503 UNAVAILABLE`` (or the stale copy)."""

from __future__ import annotations

import asyncio

from aiohttp import web

DIGEST = "sha256:" + "b" * 64


def _hostile_upstream() -> web.Application:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * 65536
        try:
            for _ in range(2_000):  # 128 MiB at most, whatever Wharf does
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    async def stalled(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"name": "org/stall", ')
        await asyncio.sleep(30)
        return response

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"name": "org/cut", ')
        assert request.transport is not None
        request.transport.close()
        return response

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v2/", ping)
    for repo, handler in (("endless", endless), ("stall", stalled), ("cut", cut)):
        app.router.add_get(f"/v2/org/{repo}/tags/list", handler)
        app.router.add_get(f"/v2/org/{repo}/referrers/{DIGEST}", handler)
    return app


async def test_endless_broken_and_stalled_upstream_lists_are_oci_errors(aiohttp_server, make_wharf):
    server = await aiohttp_server(_hostile_upstream())
    url = str(server.make_url("")).rstrip("/")
    wharf = await make_wharf(url, upstream_options={"read_timeout": 1})
    prefix = wharf.upstream_name(url)
    for repo, status in (("endless", 502), ("stall", 503), ("cut", 503)):
        for path in (f"/v2/{prefix}/org/{repo}/tags/list", f"/v2/{prefix}/org/{repo}/referrers/{DIGEST}"):
            resp = await asyncio.wait_for(wharf.client.get(path), 20)
            assert resp.status == status, (path, await resp.text())
            assert (await resp.json())["errors"][0]["code"] == "UNAVAILABLE"
