"""The cache dashboard page, ``/cache``: its figures after real pulls, charts readable without
script (SVG with title and description, and a table), fills with progress bars, names only for
who may pull them; and in headless Chromium, the dashboard moving after a pull."""

from __future__ import annotations

import asyncio
import html
import re

import aiohttp

from support.accounts import add_token, add_user
from support.browser import screenshot
from support.pulls import private_fill_and_public_fill, pull_through, until
from support.images import basic_auth_header, make_image, push_image

from proxy.http.keys import CONFIG
from proxy.web import SECURITY_HEADERS

ALICE = basic_auth_header(("alice", "alice-pw"))


class Visitor:
    """A cookie-keeping HTTP client with no Authorization header, as a browser is."""

    def __init__(self, wharf) -> None:
        self.wharf = wharf
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def get(self, path: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.wharf.url + path, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp

    async def signin(self, user: str, token: str) -> None:
        _, page, _ = await self.get("/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        async with self.session.post(self.wharf.url + "/signin", allow_redirects=False,
                                     data={"csrf": csrf, "user": user, "token": token}) as resp:
            assert resp.status == 303

    async def close(self) -> None:
        await self.session.close()


def _figure(page: str, figure_id: str) -> str:
    """The big number of one figure tile."""
    block = re.search(rf'<div id="{figure_id}">(.*?)</div>', page, re.S).group(1)
    return html.unescape(re.search(r'<dd class="big">(.*?)</dd>', block, re.S).group(1)).strip()


def _table(page: str, table_id: str) -> str:
    """One table of the page, whole."""
    return re.search(rf'<table [^>]*id="{table_id}">(.*?)</table>', page, re.S).group(1)






async def test_the_page_shows_the_figures_and_charts_without_script(registry_upstream, make_wharf, repo_name):
    image = make_image("cache-page", (4000, 40_000))
    await push_image(registry_upstream, repo_name, image, tag="1.0")
    wharf = await make_wharf(registry_upstream, auth=None, web={"sample_seconds": 1, "history_hours": 0.5})
    await pull_through(wharf, registry_upstream, repo_name, "1.0", image)
    await pull_through(wharf, registry_upstream, repo_name, "1.0", image)
    visitor = Visitor(wharf)
    try:
        status, page, resp = await visitor.get("/cache")
    finally:
        await visitor.close()
    assert status == 200 and resp.content_type == "text/html"
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers[name] == value
    assert "<script>" not in page and " style=" not in page  # the policy forbids inline script and style
    assert _figure(page, "figure-hit-ratio") == "50%"
    layer_bytes = sum(len(layer.data) for layer in image.layers)
    assert _figure(page, "figure-bytes") == f"{layer_bytes / 1000:.1f} kB"
    assert _figure(page, "figure-saved") == "3"
    assert "3 hits, 3 misses" in page
    assert '<meter min="0" max="53687091200"' in page
    assert wharf.upstream_name(registry_upstream) in page and "closed" in page  # the upstream and its circuit
    for chart in ("chart-hits", "chart-bytes", "chart-requests", "chart-store"):
        figure = re.search(rf'<figure class="chart" id="{chart}">(.*?)</figure>', page, re.S).group(1)
        assert 'role="img"' in figure and f'aria-labelledby="{chart}-t {chart}-d"' in figure
        assert re.search(r"<title id=[^>]+>\w", figure) and re.search(r"<desc id=[^>]+>\w", figure)
        assert "<table" in figure and "<th scope=\"col\">Time (UTC)</th>" in figure  # the numbers, without the chart
        assert "<path d=\"M " in figure
    assert "Fills in flight" in page and "Nothing is being downloaded" in page


async def test_fills_show_progress_and_a_private_fill_no_name(fake_upstream, make_wharf):
    wharf, pulls, private_digest, public_digest = await private_fill_and_public_fill(fake_upstream, make_wharf)
    prefix = wharf.app[CONFIG].upstreams[0].name  # the fake upstream's
    visitor = Visitor(wharf)
    try:
        async def two_bars():
            _, page, _ = await visitor.get("/cache")
            bars = re.findall(r'<progress max="300000" value="(\d+)">', page)
            return page if len(bars) == 2 and all(0 < int(b) < 300_000 for b in bars) else None

        page = await until(two_bars, "two fills with progress bars")
    finally:
        await visitor.close()
        await asyncio.gather(*pulls)
    assert f"{prefix}/open/tools" in page
    assert "payroll" not in page and private_digest[7:19] not in page
    assert "an image you may not see" in page
    assert _figure(page, "figure-fills") == "2"


async def test_privately_cached_names_only_for_admins(auth_registry_upstream, make_wharf, repo_name, tmp_path):
    secret_repo = f"{repo_name}-payroll"
    # v1 then v2 cross the budget: eviction takes v1 whole; v2 stays in the lists
    old, new = make_image("page-private", (30_000,)), make_image("page-private-2", (30_000,))
    for tag, image in (("v1", old), ("v2", new)):
        await push_image(auth_registry_upstream.url, secret_repo, image, tag=tag, auth=auth_registry_upstream.auth)
    wharf = await make_wharf(auth_registry_upstream.url, auth=None,
                             storage={"root": str(tmp_path / "store"), "max_cache_bytes": 40_000},
                             cache={"access_flush_interval": 0.2})
    add_user(wharf.database, "bob")
    _, bob_token = add_token(wharf.database, "bob")
    for tag, image in (("v1", old), ("v2", new)):
        await pull_through(wharf, auth_registry_upstream.url, secret_repo, tag, image, auth_registry_upstream.headers)
    admin, bob, anonymous = Visitor(wharf), Visitor(wharf), Visitor(wharf)
    try:
        await admin.signin(*wharf.admin)
        await bob.signin("bob", bob_token)

        async def listed_and_evicted():
            _, page, _ = await admin.get("/cache")
            return page if page.count(secret_repo) >= 3 else None  # most pulled, largest, evictions

        admin_page = await until(listed_and_evicted, "the private image in the lists and the evictions")
        for table in ("largest", "most-pulled", "evictions"):
            assert secret_repo in _table(admin_page, table)
        for visitor in (anonymous, bob):
            status, page, _ = await visitor.get("/cache")
            assert status == 200
            assert secret_repo not in page, "a privately cached image's name leaked onto the page"
            assert "not shown to you" in page  # the eviction is there, its names are not
            assert _figure(page, "figure-evictions") == _figure(admin_page, "figure-evictions")
    finally:
        for visitor in (admin, bob, anonymous):
            await visitor.close()


async def test_the_dashboard_moves_after_a_pull_in_chromium(browser, registry_upstream, make_wharf, repo_name,
                                                            tmp_path):
    image = make_image("cache-browser", (8000, 120_000))
    await push_image(registry_upstream, repo_name, image, tag="1.0")
    other = make_image("cache-browser-2", (50_000,))
    await push_image(registry_upstream, f"{repo_name}-tools", other, tag="2.1")
    wharf = await make_wharf(registry_upstream, auth=None, web={"sample_seconds": 1, "history_hours": 0.5},
                             cache={"access_flush_interval": 0.2},
                             storage={"root": str(tmp_path / "store"), "max_cache_bytes": 300_000})
    await pull_through(wharf, registry_upstream, repo_name, "1.0", image)
    page = await browser.new_page()
    await page.goto(wharf.url + "/cache")
    assert await page.title() == "Cache · Wharf"
    before = await page.locator("#figure-hit-ratio dd.big").inner_text()
    served_before = await page.locator("#figure-bytes dd.big").inner_text()
    assert before == "0%" and served_before == "0 B"

    await pull_through(wharf, registry_upstream, repo_name, "1.0", image)  # from the cache this time
    await page.get_by_role("link", name="Reload").click()
    await page.wait_for_load_state()
    assert await page.locator("#figure-hit-ratio dd.big").inner_text() == "50%"
    layer_bytes = sum(len(layer.data) for layer in image.layers)
    assert await page.locator("#figure-bytes dd.big").inner_text() == f"{layer_bytes / 1000:.1f} kB"
    assert await page.get_by_role("img", name="Hit ratio").count() == 1  # the chart, by its title

    # some history for the screenshot: a few more pulls, a second apart
    for round_ in range(6):
        await pull_through(wharf, registry_upstream, f"{repo_name}-tools" if round_ % 2 else repo_name,
                    "2.1" if round_ % 2 else "1.0", other if round_ % 2 else image)
        await asyncio.sleep(1.0)

    big = make_image("cache-browser-3", (150_000,))  # over the 300 kB budget: the least recent image is evicted
    await push_image(registry_upstream, f"{repo_name}-big", big, tag="3")
    await pull_through(wharf, registry_upstream, f"{repo_name}-big", "3", big)

    async def listed():  # eviction takes whole images: the evicted one leaves the lists of what is cached
        await page.reload()
        return (await page.locator("#most-pulled tbody tr").count() == 2
                and await page.locator("#evictions tbody tr").count() >= 1)

    await until(listed, "the two images left in the most pulled list, and an eviction")
    assert f"{repo_name}-tools" in await page.locator("#most-pulled").inner_text()
    await page.set_viewport_size({"width": 1200, "height": 900})
    await screenshot(page, "cache")
