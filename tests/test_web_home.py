"""The home page ``/``: what this Wharf mirrors (each upstream, offline ones, mirror lists), where
local images go, and each client's files — the very text of ``client_files`` for the address the
page is reached at (public_url, else the request's host) — with copy buttons that copy that text."""

from __future__ import annotations

import pytest

import html
import json
import re
import tomllib

import aiohttp
from playwright.async_api import expect

from proxy.clientconfig import CLIENTS, client_files
from proxy.http.keys import CONFIG, MIRROR_STATUS
from support.browser import screenshot

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)

UPSTREAMS = {"docker.io": "https://registry-1.docker.io", "ghcr.io": "https://ghcr.io", "quay.io": "https://quay.io"}
FILE_BLOCK = re.compile(r'<div class="client-file" data-path="([^"]+)">.*?<pre class="file"><code>(.*?)</code></pre>'
                        r'.*?data-copy="([^"]*)"', re.S)


async def _wharf(make_wharf, **overrides):
    """Wharf with three upstreams (as clients name them) that no test contacts."""
    overrides.setdefault("default_upstream", "docker.io")
    return await make_wharf(named_upstreams=UPSTREAMS, auth=None, **overrides)


async def _home(wharf, headers: dict[str, str] | None = None) -> str:
    async with aiohttp.ClientSession() as session:  # a browser's request: no Authorization header
        async with session.get(wharf.url + "/", headers=headers or {}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "text/html"
            return await resp.text()


def _shown_files(page: str) -> dict[str, tuple[str, str]]:
    """{path: (the text shown, the text its copy button copies)}."""
    return {html.unescape(path): (html.unescape(text), html.unescape(copy))
            for path, text, copy in FILE_BLOCK.findall(page)}


def _expected(wharf, host: str) -> dict[str, str]:
    config = wharf.app[CONFIG]
    return {f.path: f.text for client in CLIENTS for f in client_files(config, client, host)}


async def test_home_shows_each_upstream_and_the_client_files_for_the_requests_host(make_wharf):
    wharf = await _wharf(make_wharf, local_namespaces=["team"])
    host = wharf.url.split("://", 1)[1]
    page = await _home(wharf)
    assert f"<h1>Wharf at {host}</h1>" in page
    table = page[page.index('id="upstreams"'):page.index("</table>")]
    for name, url in UPSTREAMS.items():
        assert f"<code>{name}</code>" in table and url in table
    assert "<code>team/</code>" in page
    assert f"docker pull {host}/ghcr.io/owner/image:tag" in page
    shown = _shown_files(page)
    expected = _expected(wharf, host)
    assert set(shown) == set(expected) == {
        "/etc/containerd/certs.d/docker.io/hosts.toml", "/etc/containerd/certs.d/ghcr.io/hosts.toml",
        "/etc/containerd/certs.d/quay.io/hosts.toml", "/etc/containers/registries.conf", "/etc/docker/daemon.json"}
    for path, (text, copied) in shown.items():
        assert text == copied == expected[path], path
    # the files name this Wharf by the address the page was reached at, plain HTTP
    hosts = tomllib.loads(shown["/etc/containerd/certs.d/ghcr.io/hosts.toml"][0])["host"]
    assert list(hosts) == [f"http://{host}"]
    assert json.loads(shown["/etc/docker/daemon.json"][0])["registry-mirrors"] == [f"http://{host}"]


async def test_with_a_public_url_the_files_name_it(make_wharf):
    wharf = await _wharf(make_wharf, public_url="https://wharf.example")
    page = await _home(wharf)
    assert "<h1>Wharf at wharf.example</h1>" in page
    shown = _shown_files(page)
    assert {path: text for path, (text, _) in shown.items()} == _expected(wharf, "wharf.example")
    assert "insecure" not in shown["/etc/containers/registries.conf"][0]
    assert list(tomllib.loads(shown["/etc/containerd/certs.d/docker.io/hosts.toml"][0])["host"]) == \
        ["https://wharf.example"]


async def test_offline_upstreams_and_mirror_lists_are_shown(make_wharf):
    wharf = await _wharf(make_wharf, offline=True, mirror={"schedule": "6h"})
    wharf.app[MIRROR_STATUS].run("edge-site", ["ghcr.io/owner/app"]).finish()
    page = await _home(wharf)
    assert 'id="offline"' in page and "contacts no upstream" in page
    table = page[page.index('id="upstreams"'):page.index("</table>")]
    assert table.count(">offline</span>") == len(UPSTREAMS)
    lists = page[page.index('id="mirror-lists"'):]
    assert "<strong>edge-site</strong>" in lists.split("</p>")[0] and "<code>6h</code>" in lists.split("</p>")[0]


async def test_one_offline_upstream_is_marked_alone(make_wharf):
    wharf = await make_wharf(auth=None, default_upstream=None, upstreams=[
        {"name": "ghcr.io", "url": "https://ghcr.io", "offline": True}, {"name": "quay.io", "url": "https://quay.io"}])
    page = await _home(wharf)
    assert 'id="offline"' not in page and 'id="mirror-lists"' not in page
    rows = page[page.index('id="upstreams"'):page.index("</table>")].split("<tr>")
    assert ">offline</span>" in next(r for r in rows if "<code>ghcr.io</code>" in r)
    assert ">offline</span>" not in next(r for r in rows if "<code>quay.io</code>" in r)
    assert "is an image of this Wharf itself" in page  # no default upstream: every other name is local


async def test_a_host_header_that_is_no_host_gets_the_configured_address(make_wharf):
    wharf = await _wharf(make_wharf)
    page = await _home(wharf, headers={"Host": "evil<script>:1"})
    assert "<script>" not in page and "evil" not in page
    shown = _shown_files(page)
    assert {path: text for path, (text, _) in shown.items()} == _expected(wharf, None)


async def test_without_the_web_pages_there_is_no_home_page(make_wharf):
    wharf = await _wharf(make_wharf, web={"enabled": False})
    async with aiohttp.ClientSession() as session:
        async with session.get(wharf.url + "/") as resp:
            assert resp.status == 404
            assert "client-file" not in await resp.text()


async def test_the_copy_button_copies_the_containerd_file(make_wharf, browser):
    wharf = await _wharf(make_wharf, local_namespaces=["team"])
    wharf.app[MIRROR_STATUS].run("edge-site", ["ghcr.io/owner/app"]).finish()
    host = wharf.url.split("://", 1)[1]
    context = await browser.new_context(viewport={"width": 1200, "height": 900},
                                        permissions=["clipboard-read", "clipboard-write"])
    page = await context.new_page()
    await page.goto(wharf.url + "/")
    assert await page.title() == "Home · Wharf"
    path = "/etc/containerd/certs.d/ghcr.io/hosts.toml"
    block = page.locator(f'.client-file[data-path="{path}"]')
    expected = next(f.text for f in client_files(wharf.app[CONFIG], "containerd", host) if f.path == path)
    assert (await block.locator("pre").inner_text()).rstrip("\n") == expected.rstrip("\n")
    assert await page.locator("pre").first.inner_text() != ""
    button = block.locator("button.copy")
    await button.click()
    await expect(button).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == expected
    await screenshot(page, "home")
    await context.close()


async def test_the_page_reads_without_javascript(make_wharf, browser):
    """With scripting off the copy buttons stay hidden and every file is there to select."""
    wharf = await _wharf(make_wharf)
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(wharf.url + "/")
    assert await page.locator("button.copy:visible").count() == 0
    assert await page.locator(".client-file pre:visible").count() == 5
    await context.close()
