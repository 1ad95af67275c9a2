"""Attacks on the web pages beyond tests/test_attack_web.py, by an anonymous client on the network
and by a signed-in user of low privilege. Each test names the protection it holds; the first ones
(marked FLAW in their docstrings) fail on main at the time of writing and show a real defect:

- FLAW a session cookie that is not UTF-8 answers 500 on every page (and logs two tracebacks);
- FLAW the sign-in form's cookie, the same;
- FLAW a Host header that is no host (``[x``) answers 500 on every page;
- FLAW a browser over the client rate limit gets the registry's JSON 429, without the pages'
  security headers, instead of the 429 page;
- FLAW the home page prints an upstream URL's credentials (``https://user:secret@host``) to anyone.

The rest pin protections no other test covers: CSRF on every POST route of the router (also the
ones added later), Authorization headers never standing in for a session on a POST, the security
headers and ``no-store`` on every page route, GET never reaching a POST route, another user's token
out of reach through the tokens pages, concurrent sessions, and ``public_url`` winning over the Host
header in every generated command."""

from __future__ import annotations

import pytest

import asyncio
import re
import time
import uuid

import aiohttp
from sqlalchemy import func, select
from yarl import URL

from support.accounts import add_org, add_token, add_user, basic, revoke
from support.images import make_image, push_image
from support.web import WebClient, csrf_of

from proxy.storage.database import Org, OrgMember, Package, Token, User, Version, WebSession
from proxy.web import is_page

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)

HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def signed_in_as(page: str) -> str | None:
    found = re.search(r"Signed in as <strong>([^<]+)</strong>", page)
    return found.group(1) if found else None


async def raw(base_url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte (headers no client library would send): status, headers, body."""
    url = URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *extra, "Connection: close", "", ""]).encode()


class Scene:
    """alice, a server admin, with a private package, an org ``acme`` she owns; bob, a plain user with
    a token of his own; each with a token of every scope."""

    def __init__(self, wharf) -> None:
        self.wharf = wharf
        self.secrets, self.token_ids = {}, {}
        for name, admin in (("alice", True), ("bob", False)):
            add_user(wharf.database, name, admin=admin)
            self.token_ids[name], self.secrets[name] = add_token(wharf.database, name)
        self.org = unique("acme")
        add_org(wharf.database, self.org, {"alice": "owner"})
        self.private = f"alice/{unique('private')}"
        self.clients: list[WebClient] = []

    async def setup(self) -> "Scene":
        await push_image(self.wharf.url, self.private, make_image(self.private), "v1",
                         auth=("alice", self.secrets["alice"]))
        return self

    async def browser(self, who: str | None = None) -> WebClient:
        client = WebClient(self.wharf.url)
        self.clients.append(client)
        if who:
            await client.signin(who, self.secrets[who])
        return client

    def version_id(self) -> int:
        with self.wharf.database.session() as s:
            package = s.scalar(select(Package).where(Package.repository == self.private))
            return s.scalar(select(Version.id).where(Version.package_id == package.id))

    def params(self) -> dict[str, str]:
        """A real value for each path parameter the page routes take."""
        namespace, name = self.private.split("/", 1)
        return {"namespace": namespace, "name": name, "version_id": str(self.version_id()), "org": self.org,
                "user": "bob", "id": str(self.token_ids["bob"])}

    def paths(self, method: str) -> list[str]:
        """Every page route of ``method`` in the router, its parameters filled in."""
        params = self.params()
        found = []
        for route in self.wharf.app.router.routes():
            path = route.resource.canonical if route.resource is not None else ""
            if route.method != method or not is_page(path) or path.startswith("/static"):
                continue
            found.append(re.sub(r"\{(\w+)\}", lambda m: params.get(m.group(1), "x"), path))
        return sorted(set(found))

    def state(self) -> tuple:
        """What a forged form could change: users, orgs, memberships, tokens, versions, visibility, sessions."""
        with self.wharf.database.session() as s:
            return (s.scalar(select(func.count()).select_from(User)),
                    s.scalar(select(func.count()).select_from(Org)),
                    tuple(s.execute(select(OrgMember.org_id, OrgMember.user_id, OrgMember.role)
                                    .order_by(OrgMember.org_id, OrgMember.user_id)).all()),
                    tuple(s.execute(select(Token.id, Token.revoked_at).order_by(Token.id)).all()),
                    tuple(s.execute(select(Version.id, Version.deleted_at).order_by(Version.id)).all()),
                    tuple(s.execute(select(Package.repository, Package.visibility).order_by(Package.id)).all()),
                    s.scalar(select(func.count()).select_from(WebSession)))

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


async def make_scene(make_wharf, **overrides) -> Scene:
    return await Scene(await make_wharf(auth=None, **overrides)).setup()


# FLAW: malformed headers answer 500 -----------------------------------------------------------------------
async def test_a_session_cookie_that_is_not_utf8_is_anonymous_not_a_500(make_wharf):
    """FLAW. aiohttp keeps undecodable header bytes as surrogates; proxy.web.sessions._hash calls
    ``session_id.encode()`` on them (UnicodeEncodeError), from session_of on every page and again
    in error_page: a 500 (plain text) and two tracebacks in the log per request, from anyone."""
    scene = await make_scene(make_wharf)
    try:
        for path in ("/", "/packages", "/signin", f"/packages/{scene.private}", "/no-such-page"):
            status, headers, body = await raw(scene.wharf.url, b"GET " + path.encode() + b" HTTP/1.1\r\n"
                                              b"Host: 127.0.0.1\r\nCookie: wharf_session=\xff\xfe\r\n"
                                              b"Connection: close\r\n\r\n")
            expected = 404 if path in ("/no-such-page", f"/packages/{scene.private}") else 200
            assert status == expected, (path, status, body[:200])
            assert headers["content-type"].startswith("text/html"), (path, headers["content-type"])
    finally:
        await scene.close()


async def test_a_signin_cookie_that_is_not_utf8_is_a_403_not_a_500(make_wharf):
    """FLAW. proxy.web.signin.signin compares ``cookie.encode()`` of the wharf_signin cookie: a
    cookie of undecodable bytes is a UnicodeEncodeError, a 500, instead of the login-CSRF refusal."""
    scene = await make_scene(make_wharf)
    try:
        body = b"csrf=x&user=alice&token=" + scene.secrets["alice"].encode()
        status, headers, answer = await raw(scene.wharf.url,
                                            b"POST /signin HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: wharf_signin=\xff\r\n"
                                            b"Content-Type: application/x-www-form-urlencoded\r\n"
                                            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                                            + body)
        assert status == 403 and headers["content-type"].startswith("text/html"), (status, answer[:200])
        assert "set-cookie" not in headers or "wharf_session=" not in headers["set-cookie"]
    finally:
        await scene.close()


async def test_a_host_header_that_is_no_host_gets_pages_not_500s(make_wharf):
    """FLAW (reported by clients at 05:39, still on main). proxy.web.render.registry_host runs
    urlsplit over ``scheme://Host``; ``[x`` (an unclosed IPv6 bracket) raises ValueError in
    render.page for every page, the error page too: a 500 in plain text instead of the page."""
    scene = await make_scene(make_wharf)
    try:
        for host in ("[x", "[::1"):
            for path, expected in (("/", 200), ("/packages", 200), ("/signin", 200), ("/no-such-page", 404)):
                status, headers, body = await raw(scene.wharf.url, (
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").encode())
                assert status == expected and headers["content-type"].startswith("text/html"), \
                    (host, path, status, body[:200])
    finally:
        await scene.close()


async def test_a_rate_limited_browser_gets_the_429_page_with_the_security_headers(make_wharf):
    """FLAW. client_limit_middleware (proxy.http.ratelimit) sits outside pages_middleware
    (setup_web appends it last, so it is the innermost): its TooManyRequests becomes the registry's
    JSON error in ``observe``, without Content-Security-Policy or X-Frame-Options, on every page."""
    wharf = await make_wharf(auth=None, clients={"requests_per_second": 0.01, "burst": 2})
    answers = [await raw(wharf.url, get("/packages")) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    status, headers, body = answers[-1]
    assert int(headers["retry-after"]) > 0
    assert headers["content-type"].startswith("text/html"), (headers["content-type"], body[:200])
    for name in HEADERS:
        assert name.lower() in headers, name


# CSRF on every POST route ------------------------------------------------------------------------------------
async def test_every_post_route_refuses_a_form_without_the_sessions_csrf_token(make_wharf):
    """Every POST page route of the router (those added later too) refuses, and changes nothing: a
    signed-in admin's browser without a token, with another session's token, and anonymous."""
    scene = await make_scene(make_wharf)
    try:
        alice, bob, anonymous = await scene.browser("alice"), await scene.browser("bob"), await scene.browser()
        bobs_csrf = await bob.session_csrf()
        routes = scene.paths("POST")
        assert {"/signout", "/settings/tokens", "/admin/users", "/admin/orgs",
                f"/packages/{scene.private}/visibility"} <= set(routes), routes
        before = scene.state()
        fields = {"visibility": "public", "name": unique("mallory"), "owner": "alice", "user": "bob",
                  "role": "owner", "admin": "on", "scopes": "write:packages", "expires": "none", "note": "forged"}
        for path in routes:
            if path == "/signin":
                continue  # its own login-CSRF check: tests/test_attack_web.py
            tries = [(alice, {}), (alice, {"csrf": ""}), (alice, {"csrf": bobs_csrf})]
            if path != "/signout":  # without a session there is nothing to sign out of: a 303 home
                tries.append((anonymous, {}))
            for client, extra in tries:
                status, page, resp = await client.post(path, {**fields, **extra})
                assert status == 403 and resp.content_type == "text/html", (path, extra, status, page[:300])
                assert "wharf_pat_" not in page, path
        assert scene.state() == before
        assert signed_in_as((await alice.get("/packages"))[1]) == "alice"
    finally:
        await scene.close()


async def test_authorization_headers_never_stand_in_for_a_session_on_a_post(make_wharf):
    """A script (or a confused deputy) sending the admin's Basic credentials to the pages' forms,
    without a session: refused on every POST route, nothing changed."""
    scene = await make_scene(make_wharf)
    try:
        client = await scene.browser()
        before = scene.state()
        for path in scene.paths("POST"):
            if path in ("/signin", "/signout"):  # no session to end; sign-in: tests/test_attack_web.py
                continue
            for header in (basic("alice", scene.secrets["alice"]), f"Bearer {scene.secrets['alice']}"):
                status, page, _ = await client.post(path, {"visibility": "public", "name": unique("m"),
                                                           "scopes": "read:packages", "expires": "30"},
                                                    headers={"Authorization": header})
                assert status == 403, (path, status, page[:300])
        assert scene.state() == before
        assert client.cookie("wharf_session") is None
    finally:
        await scene.close()


# headers on every page ---------------------------------------------------------------------------------------
async def test_every_page_route_sends_the_security_headers_and_no_store(make_wharf):
    """Every GET page route (filled with real values), for an anonymous visitor, a plain user and an
    admin, whatever its status: the security headers; every HTML answer ``no-store``, so no shared
    cache keeps a page with a CSRF token, a token secret or private names."""
    scene = await make_scene(make_wharf)
    try:
        clients = [await scene.browser(), await scene.browser("bob"), await scene.browser("alice")]
        routes = scene.paths("GET")
        assert {"/", "/packages", "/signin", "/settings/tokens", "/admin"} <= set(routes), routes
        for path in routes + ["/no-such-page", "/static/no-such-file", "/static/"]:
            for client in clients:
                status, _, resp = await client.get(path)
                assert status < 500, (path, status)
                for name in HEADERS:
                    assert name in resp.headers, (path, status, name)
                assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
                assert resp.headers["X-Frame-Options"] == "DENY"
                if resp.content_type == "text/html":
                    assert "no-store" in resp.headers.get("Cache-Control", ""), (path, status)
    finally:
        await scene.close()


async def test_no_get_or_head_reaches_a_post_route(make_wharf):
    """A link or an <img> (GET, HEAD) to a form's action changes nothing: 405 (the page, with Allow),
    or the page of what the path names; never the action."""
    scene = await make_scene(make_wharf)
    try:
        alice = await scene.browser("alice")
        before = scene.state()
        for path in scene.paths("POST"):
            for method in ("GET", "HEAD"):
                async with alice.session.request(method, scene.wharf.url + path, allow_redirects=False) as resp:
                    await resp.read()
                    assert resp.status in (200, 404, 405), (method, path, resp.status)
                    if resp.status == 405:
                        assert "POST" in resp.headers["Allow"], path
        assert scene.state() == before
        assert signed_in_as((await alice.get("/packages"))[1]) == "alice"
    finally:
        await scene.close()


# another's token -----------------------------------------------------------------------------------------------
async def test_a_user_cannot_see_or_revoke_anothers_token_through_the_tokens_pages(make_wharf):
    """bob knows alice's token id (ids are sequential): its confirming page is the 404 page (neither
    its note nor its hint shown), the revoking POST with bob's own CSRF token is 404 and alice's
    token still signs in."""
    scene = await make_scene(make_wharf)
    try:
        alice = await scene.browser("alice")
        status, page, _ = await alice.form("/settings/tokens/new", "/settings/tokens",
                                           {"note": "alice-secret-note", "scopes": "read:packages", "expires": "30"})
        assert status == 201
        with scene.wharf.database.session() as s:
            target = s.scalar(select(Token).where(Token.note == "alice-secret-note"))
            target_id, hint = target.id, target.hint
        bob = await scene.browser("bob")
        status, page, _ = await bob.get(f"/settings/tokens/{target_id}/revoke")
        assert status == 404 and "alice-secret-note" not in page and hint not in page
        status, page, _ = await bob.post_as_session(f"/settings/tokens/{target_id}/revoke")
        assert status == 404 and "alice-secret-note" not in page
        for path in (f"/admin/tokens/{target_id}/revoke", "/admin/users/alice/tokens"):
            status, page, _ = await bob.get(path)
            assert status == 403 and "alice-secret-note" not in page and hint not in page, path
        status, _, _ = await bob.post_as_session(f"/admin/tokens/{target_id}/revoke")
        assert status == 403
        with scene.wharf.database.session() as s:
            assert s.get(Token, target_id).revoked_at is None
    finally:
        await scene.close()


# sessions ----------------------------------------------------------------------------------------------------------
async def test_concurrent_sessions_end_each_on_its_own_and_all_with_their_token(make_wharf):
    """Two browsers signed in with one token: signing out of one leaves the other; revoking the
    token ends the other too; a third browser's new session has its own id and CSRF token."""
    scene = await make_scene(make_wharf)
    try:
        token_id, secret = add_token(scene.wharf.database, "bob")
        first, second, third = await scene.browser(), await scene.browser(), await scene.browser()
        for client in (first, second, third):
            await client.signin("bob", secret)
        ids = {client.cookie("wharf_session") for client in (first, second, third)}
        csrfs = {await client.session_csrf() for client in (first, second, third)}
        assert len(ids) == 3 and len(csrfs) == 3
        assert all(len(i) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
        status, _, _ = await first.post_as_session("/signout")
        assert status == 303
        assert signed_in_as((await first.get("/packages"))[1]) is None
        assert signed_in_as((await second.get("/packages"))[1]) == "bob"
        revoke(scene.wharf.database, token_id)
        for client in (second, third):
            assert signed_in_as((await client.get("/packages"))[1]) is None
        with scene.wharf.database.session() as s:  # the sessions that no longer stand are gone
            assert s.scalar(select(func.count()).select_from(WebSession).where(WebSession.token_id == token_id)) == 0
    finally:
        await scene.close()


async def test_a_session_does_not_outlive_session_hours_when_the_cookie_is_kept(make_wharf):
    """web.session_hours is kept on the server: the cookie's Max-Age says it, and a browser that
    ignores Max-Age (replays the id later) is anonymous once the server's time is up."""
    scene = await make_scene(make_wharf, web={"session_hours": 0.5})
    try:
        alice = await scene.browser()
        resp = await alice.signin("alice", scene.secrets["alice"])
        assert resp.cookies["wharf_session"]["max-age"] == "1800"
        with scene.wharf.database.session() as s:
            row = s.scalar(select(WebSession))
            assert 1790 < row.expires_at - row.created_at <= 1800
            row.expires_at = time.time() - 1
        replay = await scene.browser()
        replay.session.cookie_jar.update_cookies({"wharf_session": alice.cookie("wharf_session")},
                                                 response_url=URL(scene.wharf.url))
        assert signed_in_as((await replay.get("/packages"))[1]) is None
    finally:
        await scene.close()


# Host header --------------------------------------------------------------------------------------------------------
async def test_public_url_wins_over_the_host_header_in_every_generated_command(make_wharf):
    """With public_url set, a forged Host header reaches no command, file or link a page
    generates (home page, package page, the new token's docker login)."""
    scene = await make_scene(make_wharf, public_url="https://wharf.example")
    try:
        alice = await scene.browser()
        # the cookie is Secure (public_url is https); hand it over as the browser would behind TLS
        _, form, resp = await alice.get("/signin")
        value = re.search(r"wharf_signin=([^;]+)", resp.headers["Set-Cookie"]).group(1)
        status, _, resp = await alice.post("/signin", {"csrf": csrf_of(form, "/signin"), "user": "alice",
                                                       "token": scene.secrets["alice"]},
                                           headers={"Cookie": f"wharf_signin={value}"})
        assert status == 303
        session = re.search(r"wharf_session=([^;]+)", ",".join(resp.headers.getall("Set-Cookie"))).group(1)
        headers = {"Host": "evil.example", "Cookie": f"wharf_session={session}"}
        for path in ("/", f"/packages/{scene.private}", "/packages"):
            status, page, _ = await alice.get(path, headers=headers)
            assert status == 200, path
            assert "evil.example" not in page, path
        assert "wharf.example/" + scene.private in (await alice.get(f"/packages/{scene.private}", headers=headers))[1]
    finally:
        await scene.close()


# the home page ---------------------------------------------------------------------------------------------------------
async def test_the_home_page_shows_no_credentials_written_into_an_upstream_url(make_wharf):
    """FLAW. The config accepts an upstream URL with credentials in it (``https://user:secret@host``,
    UpstreamConfig._url only checks the scheme) and home.html prints ``u.url`` as written, to
    anonymous visitors: the upstream account's password on the front page."""
    wharf = await make_wharf(auth=None, named_upstreams={"mirror.example": "https://robot:s3cr3t-pw@127.0.0.1:9"})
    async with aiohttp.ClientSession() as session:
        async with session.get(wharf.url + "/") as resp:
            page = await resp.text()
    assert resp.status == 200 and "mirror.example" in page
    assert "s3cr3t-pw" not in page and "robot:" not in page
