"""Attacks on the pages, each with the protection that stops it (every test fails without it):
cross-site form posts (CSRF, login CSRF), session fixation, sessions that outlive sign-out, their
token or their time, private packages leaking through lists, search, counts and pages, password
guessing through the sign-in form, cookies readable by scripts or sent in clear, secrets in pages,
the database or logs, script injection through package metadata, open redirects after sign-in."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid

import aiohttp
import pytest
from sqlalchemy import select, update
from yarl import URL

from support.accounts import add_token, add_user, basic, revoke
from support.images import MANIFEST_ACCEPT, make_image, push_image
from support.web import WebClient, csrf_of

from proxy.http.keys import AUDIT
from proxy.logs import JsonFormatter
from proxy.storage.database import Token, WebSession

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class Scene:
    """alice with a private and a public package, bob with nothing of his; tokens of every scope."""

    def __init__(self, wharf) -> None:
        self.wharf = wharf
        for name in ("alice", "bob"):
            add_user(wharf.database, name)
        self.token_ids, self.secrets = {}, {}
        for name in ("alice", "bob"):
            self.token_ids[name], self.secrets[name] = add_token(wharf.database, name)
        self.private = f"alice/{unique('private')}"
        self.public = f"alice/{unique('public')}"
        self.clients: list[WebClient] = []

    async def setup(self) -> "Scene":
        for repository in (self.private, self.public):
            await push_image(self.wharf.url, repository, make_image(repository), "v1",
                             auth=("alice", self.secrets["alice"]))
        async with aiohttp.ClientSession() as session:
            name = self.public.split("/", 1)[1]
            async with session.patch(f"{self.wharf.url}/api/users/alice/packages/container/{name}",
                                     json={"visibility": "public"},
                                     headers={"Authorization": basic("alice", self.secrets["alice"])}) as resp:
                assert resp.status == 200
        return self

    async def browser(self, who: str | None = None) -> WebClient:
        client = WebClient(self.wharf.url)
        self.clients.append(client)
        if who:
            await client.signin(who, self.secrets[who])
        return client

    async def pull(self, repository: str, who: str = "alice") -> int:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.wharf.url}/v2/{repository}/manifests/v1",
                                   headers={"Accept": MANIFEST_ACCEPT,
                                            "Authorization": basic(who, self.secrets[who])}) as resp:
                return resp.status

    async def version_id(self, client: WebClient, repository: str) -> str:
        _, page, _ = await client.get(f"/packages/{repository}/versions")
        return re.search(r'/versions/(\d+)"', page).group(1)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


@pytest.fixture
async def scene(make_wharf):
    scene = await Scene(await make_wharf(auth=None, access={"login_failures": 3})).setup()
    yield scene
    await scene.close()


def signed_in_as(page: str) -> str | None:
    found = re.search(r"Signed in as <strong>([^<]+)</strong>", page)
    return found.group(1) if found else None


# CSRF -------------------------------------------------------------------------------------------------
async def test_a_form_post_without_the_sessions_csrf_token_changes_nothing(scene):
    alice = await scene.browser("alice")
    path = f"/packages/{scene.private}/versions"
    action = f"{path}/{await scene.version_id(alice, scene.private)}/delete"
    bob = await scene.browser("bob")
    bobs_token = await bob.session_csrf()
    for fields in ({}, {"csrf": ""}, {"csrf": "x" * 43}, {"csrf": bobs_token}):
        status, page, resp = await alice.post(action, fields)
        assert status == 403 and resp.content_type == "text/html", fields
        assert "Nothing was changed" in page
    assert await scene.pull(scene.private) == 200
    assert "Deleted versions" in (await alice.get(path))[1]
    assert (await alice.get(path))[1].count("/delete\"") == 1  # still one active version to delete


async def test_a_form_post_from_another_site_changes_nothing_even_with_the_token(scene):
    alice = await scene.browser("alice")
    package = f"/packages/{scene.private}"
    token = await alice.session_csrf()
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": scene.wharf.url.replace("127.0.0.1", "localhost")}):
        status, page, _ = await alice.post(f"{package}/visibility", {"csrf": token, "visibility": "public"},
                                           headers=headers)
        assert status == 403 and "another site" in page, headers
    anonymous = await scene.browser()
    assert (await anonymous.get(package))[0] == 404  # still private
    # the same form from this site works: the refusal above was the origin's
    status, _, _ = await alice.post(f"{package}/visibility", {"csrf": token, "visibility": "public"},
                                    headers={"Origin": scene.wharf.url, "Sec-Fetch-Site": "same-origin"})
    assert status == 303
    assert (await anonymous.get(package))[0] == 200


async def test_sign_in_needs_the_forms_own_token_login_csrf(scene):
    victim = await scene.browser()
    # an attacker's page posting their own credentials into the victim's browser: no sign-in cookie
    fields = {"user": "bob", "token": scene.secrets["bob"]}
    for extra in ({}, {"csrf": "forged"}):
        status, page, _ = await victim.post("/signin", {**fields, **extra})
        assert status == 403 and "expired or was not sent from this site" in page
        assert victim.cookie("wharf_session") is None
    _, page, _ = await victim.get("/signin")
    status, _, _ = await victim.post("/signin", {**fields, "csrf": csrf_of(page, "/signin")},
                                     headers={"Origin": "https://evil.example"})
    assert status == 403 and victim.cookie("wharf_session") is None
    assert signed_in_as((await victim.get("/packages"))[1]) is None


# sessions -----------------------------------------------------------------------------------------------
async def test_a_cookie_set_before_sign_in_is_never_the_session(scene):
    attacker = await scene.browser("bob")  # a real session of the attacker's, planted in the victim's browser
    planted = attacker.cookie("wharf_session")
    victim = await scene.browser()
    victim.session.cookie_jar.update_cookies({"wharf_session": planted}, response_url=URL(scene.wharf.url))
    assert signed_in_as((await victim.get("/packages"))[1]) == "bob"
    await victim.signin("alice", scene.secrets["alice"])
    fresh = victim.cookie("wharf_session")
    assert fresh and fresh != planted
    assert signed_in_as((await victim.get("/packages"))[1]) == "alice"
    # the planted id is not alice's session, and its own session ended with the sign-in
    other = await scene.browser()
    other.session.cookie_jar.update_cookies({"wharf_session": planted}, response_url=URL(scene.wharf.url))
    assert signed_in_as((await other.get("/packages"))[1]) is None
    # an id the attacker made up is not promoted either
    made_up = await scene.browser()
    made_up.session.cookie_jar.update_cookies({"wharf_session": "attacker-chosen-id"},
                                              response_url=URL(scene.wharf.url))
    await made_up.signin("alice", scene.secrets["alice"])
    assert made_up.cookie("wharf_session") != "attacker-chosen-id"


async def test_sign_out_ends_the_session_on_the_server(scene):
    alice = await scene.browser("alice")
    old = alice.cookie("wharf_session")
    status, _, resp = await alice.post_as_session("/signout")
    assert status == 303 and "wharf_session" in resp.cookies and resp.cookies["wharf_session"].value == ""
    replay = await scene.browser()
    replay.session.cookie_jar.update_cookies({"wharf_session": old}, response_url=URL(scene.wharf.url))
    status, page, _ = await replay.get("/packages")
    assert signed_in_as(page) is None and f'href="/packages/{scene.private}"' not in page
    assert (await replay.get(f"/packages/{scene.private}"))[0] == 404
    with scene.wharf.database.session() as s:
        hashed = hashlib.sha256(old.encode()).hexdigest()
        assert s.scalar(select(WebSession).where(WebSession.id_hash == hashed)) is None


async def test_a_revoked_or_expired_token_ends_the_session(scene):
    alice = await scene.browser("alice")
    assert (await alice.get(f"/packages/{scene.private}"))[0] == 200
    revoke(scene.wharf.database, scene.token_ids["alice"])
    status, page, _ = await alice.get(f"/packages/{scene.private}")
    assert status == 404 and signed_in_as(page) is None
    # a token that expires: the session ends with it
    token_id, secret = add_token(scene.wharf.database, "bob")
    bob = await scene.browser()
    await bob.signin("bob", secret)
    assert signed_in_as((await bob.get("/packages"))[1]) == "bob"
    with scene.wharf.database.session() as s:
        s.execute(update(Token).where(Token.id == token_id).values(expires_at=time.time() - 1))
    assert signed_in_as((await bob.get("/packages"))[1]) is None


async def test_a_session_ends_after_session_hours(scene):
    alice = await scene.browser("alice")
    with scene.wharf.database.session() as s:
        row = s.scalar(select(WebSession))
        assert 11.9 * 3600 < row.expires_at - row.created_at <= 12 * 3600  # web.session_hours, the default
        s.execute(update(WebSession).values(expires_at=time.time() - 1))
    assert signed_in_as((await alice.get("/packages"))[1]) is None


async def test_pages_never_take_authorization_headers(scene):
    anonymous = await scene.browser()
    alices = {"Authorization": basic("alice", scene.secrets["alice"])}
    status, page, _ = await anonymous.get("/packages", headers=alices)
    assert signed_in_as(page) is None and f'href="/packages/{scene.private}"' not in page
    status, _, _ = await anonymous.get(f"/packages/{scene.private}", headers=alices)
    assert status == 404


async def test_garbage_session_cookies_are_anonymous(scene):
    for value in ("", "x", "a" * 5000, "%00%ff", '"quoted"'):
        client = await scene.browser()
        client.session.cookie_jar.update_cookies({"wharf_session": value}, response_url=URL(scene.wharf.url))
        status, page, _ = await client.get("/packages")
        assert status == 200 and signed_in_as(page) is None, value


# leaks ----------------------------------------------------------------------------------------------------
async def test_a_private_package_leaks_through_no_page(scene):
    name = scene.private.split("/", 1)[1]
    for who in (None, "bob"):
        client = await scene.browser(who)
        for path in ("/packages", f"/packages?q={name}", "/packages?owner=alice", "/packages?visibility=private",
                     f"/packages?q={name[:7]}&owner=alice&visibility=private"):
            status, page, _ = await client.get(path)
            assert status == 200 and f'href="/packages/{scene.private}"' not in page, (who, path)
            total = re.search(r"(\d+) packages?", page).group(1)
            assert total == ("1" if path in ("/packages", "/packages?owner=alice") else "0"), (who, path, total)
        for path in (f"/packages/{scene.private}", f"/packages/{scene.private}/versions",
                     f"/packages/{scene.private}/versions/1"):
            assert (await client.get(path))[0] == 404, (who, path)
        api = await client.get(f"/api/users/alice/packages/container/{name}")
        assert api[0] in (401, 404)  # anonymous: 404 too on GitHub's API for a package it cannot see


# sign-in ---------------------------------------------------------------------------------------------------
async def test_sign_in_is_throttled_as_docker_login_is(scene):
    client = await scene.browser()
    for attempt in range(2):
        _, page, _ = await client.get("/signin")
        status, _, _ = await client.post("/signin", {"csrf": csrf_of(page, "/signin"), "user": "alice",
                                                     "token": "wharf_pat_wrong" + "x" * 30})
        assert status == 403
    # a third failure through the registry's Basic sign-in: the same throttle
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{scene.wharf.url}/v2/",
                               headers={"Authorization": basic("alice", "wharf_pat_wrong" + "y" * 30)}) as resp:
            assert resp.status == 401
    _, fresh = add_token(scene.wharf.database, "alice")  # right, and never used: the throttle decides
    _, page, _ = await client.get("/signin")
    status, page, resp = await client.post("/signin", {"csrf": csrf_of(page, "/signin"), "user": "alice",
                                                       "token": fresh})
    assert status == 429 and int(resp.headers["Retry-After"]) > 0
    assert resp.content_type == "text/html" and "too many failed sign-ins" in page
    assert client.cookie("wharf_session") is None


async def test_after_sign_in_only_paths_of_this_site(scene):
    client = await scene.browser()
    for target, expected in (("//evil.example/x", "/packages"), ("https://evil.example", "/packages"),
                             ("/\\evil.example", "/packages"), ("/packages?q=x", "/packages?q=x")):
        _, page, _ = await client.get("/signin")
        status, _, resp = await client.post("/signin", {"csrf": csrf_of(page, "/signin"), "user": "alice",
                                                        "token": scene.secrets["alice"], "next": target})
        assert status == 303 and resp.headers["Location"].split("done=")[0].rstrip("?&") == expected, target


# cookies ------------------------------------------------------------------------------------------------------
async def cookie_headers(scene, wharf) -> dict[str, str]:
    """The Set-Cookie headers of the sign-in form and of a sign-in through it, the form's cookie
    sent back by hand (a cookie jar keeps a Secure cookie from plain HTTP)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async with session.get(wharf.url + "/signin") as resp:
            form_cookie = resp.headers["Set-Cookie"]
            page = await resp.text()
        value = re.match(r"wharf_signin=([^;]+)", form_cookie).group(1)
        async with session.post(wharf.url + "/signin", allow_redirects=False,
                                data={"csrf": csrf_of(page, "/signin"), "user": "alice",
                                      "token": scene.secrets["alice"]},
                                headers={"Cookie": f"wharf_signin={value}"}) as resp:
            assert resp.status == 303
            session_cookie = next(h for h in resp.headers.getall("Set-Cookie") if h.startswith("wharf_session="))
    return {"form": form_cookie, "session": session_cookie}


async def test_cookies_are_httponly_samesite_and_secure_behind_tls(scene, make_wharf):
    plain = await cookie_headers(scene, scene.wharf)
    for header in plain.values():
        assert "HttpOnly" in header and "Path=/" in header and "Secure" not in header
    assert "SameSite=Lax" in plain["session"] and "SameSite=Strict" in plain["form"]
    secure = await make_wharf(auth=None, public_url="https://wharf.example")
    other = Scene(secure)
    headers = await cookie_headers(other, secure)
    for header in headers.values():
        assert "Secure" in header and "HttpOnly" in header
    forced = await make_wharf(auth=None, web={"cookie_secure": True})
    headers = await cookie_headers(Scene(forced), forced)
    assert all("Secure" in h for h in headers.values())


# secrets ------------------------------------------------------------------------------------------------------
async def test_no_secret_in_pages_database_or_logs(scene, caplog):
    caplog.set_level(logging.DEBUG)
    secret = scene.secrets["alice"]
    client = await scene.browser()
    _, page, _ = await client.get("/signin")
    await client.post("/signin", {"csrf": csrf_of(page, "/signin"), "user": "alice", "token": secret + "x"})
    await client.signin("alice", secret)
    session_id = client.cookie("wharf_session")
    pages = []
    for path in ("/packages", f"/packages/{scene.private}", f"/packages/{scene.private}/versions", "/signin",
                 "/nothing-here"):
        pages.append((await client.get(path))[1])
    for page in pages:
        assert secret not in page and secret[len("wharf_pat_"):][:20] not in page and session_id not in page
    with scene.wharf.database.engine.connect() as connection:
        dump = "\n".join(str(row) for table in ("web_sessions", "tokens")
                         for row in connection.exec_driver_sql(f"SELECT * FROM {table}"))
    assert session_id not in dump and secret not in dump
    assert hashlib.sha256(session_id.encode()).hexdigest() in dump
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert secret not in logged and session_id not in logged
    audit = scene.wharf.app[AUDIT].path.read_text()
    assert '"action":"web.signin"' in audit and secret not in audit and session_id not in audit


async def test_a_script_in_a_description_is_shown_as_text(scene):
    repository = f"alice/{unique('xss')}"
    evil = '<script>alert(document.cookie)</script><img src=x onerror=alert(1)>"\'&'
    await push_image(scene.wharf.url, repository, make_image(repository, labels={
        "org.opencontainers.image.description": evil, "org.opencontainers.image.licenses": "<b>MIT</b>"}),
        "v1", auth=("alice", scene.secrets["alice"]))
    alice = await scene.browser("alice")
    for path in (f"/packages/{repository}", f"/packages?q={repository.split('/')[1]}"):
        status, page, resp = await alice.get(path)
        assert status == 200
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>MIT" not in page
        assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in page
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    status, page, _ = await alice.get("/packages?q=<script>alert(1)</script>")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
