"""Signing in and out of the pages, the HTML error pages and the headers every page carries, at the
HTTP level (the browser tests are tests/test_web_browser.py)."""

from __future__ import annotations

import aiohttp
import pytest

from support.accounts import add_token, add_user
from support.web import WebClient, csrf_of

from proxy.web import SECURITY_HEADERS

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)


@pytest.fixture
async def wharf(make_wharf):
    wharf = await make_wharf(auth=None)
    add_user(wharf.database, "alice")
    return wharf


@pytest.fixture
async def browser_client(wharf):
    client = WebClient(wharf.url)
    yield client
    await client.close()


async def test_sign_in_shows_who_is_signed_in_and_sign_out_ends_it(wharf, browser_client):
    _, secret = add_token(wharf.database, "alice")
    status, html, _ = await browser_client.get("/signin")
    assert status == 200 and "<h1>Sign in</h1>" in html and "Signed in as" not in html
    resp = await browser_client.signin("alice", secret)
    assert resp.headers["Location"] == "/packages?done=signed_in"
    status, html, _ = await browser_client.get("/signin")
    assert "Signed in as <strong>alice</strong>" in html
    status, _, resp = await browser_client.post("/signout", {"csrf": csrf_of(html, "/signout")})
    assert status == 303
    status, html, _ = await browser_client.get("/signin")
    assert "Signed in as" not in html


async def test_a_wrong_token_is_refused_and_not_echoed(wharf, browser_client):
    _, secret = add_token(wharf.database, "alice")
    wrong = secret[:-4] + "AAAA"
    _, html, _ = await browser_client.get("/signin")
    status, html, _ = await browser_client.post("/signin", {"csrf": csrf_of(html, "/signin"), "user": "alice",
                                                            "token": wrong})
    assert status == 403
    assert "do not match" in html and wrong not in html
    assert browser_client.cookie("wharf_session") is None


async def test_unknown_paths_are_an_html_404_with_the_security_headers(wharf, browser_client):
    status, html, resp = await browser_client.get("/no/such/page")
    assert status == 404 and resp.content_type == "text/html"
    assert "<h1>Not found</h1>" in html
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers[name] == value
    assert "'unsafe-inline'" not in resp.headers["Content-Security-Policy"]
    # the registry and the API keep their own errors
    status, body, resp = await browser_client.get("/v2/no/such/thing/tags/list/x")
    assert resp.content_type == "application/json"
    status, _, resp = await browser_client.get("/api/nothing")
    assert status == 404 and resp.content_type == "application/json"


async def test_a_wrong_method_is_an_html_405(wharf, browser_client):
    async with browser_client.session.delete(wharf.url + "/signin") as resp:
        assert resp.status == 405 and resp.content_type == "text/html"
        assert "Method not allowed" in await resp.text()
        assert "GET" in resp.headers["Allow"]


async def test_static_files_are_served(wharf, browser_client):
    status, css, resp = await browser_client.get("/static/wharf.css")
    assert status == 200 and resp.content_type == "text/css" and ":root" in css
    status, js, resp = await browser_client.get("/static/wharf.js")
    assert status == 200 and "clipboard" in js
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_no_pages_when_the_web_is_off(make_wharf):
    wharf = await make_wharf(auth=None, web={"enabled": False})
    async with aiohttp.ClientSession() as session:
        async with session.get(wharf.url + "/signin") as resp:
            assert resp.status == 404 and resp.content_type == "application/json"


@pytest.mark.parametrize("host", ["[x", "[::1", "a b", "evil.example/path", "[::1]:5000", "wharf.example:8080"])
async def test_any_host_header_gets_a_page_not_a_500(wharf, browser_client, host):
    for path in ("/packages", "/signin", "/nothing"):
        status, page, _ = await browser_client.get(path, headers={"Host": host})
        assert status in (200, 404) and "<!doctype html>" in page, (host, path, status)
