"""The tokens page (proxy.web.tokens_pages) under a real Wharf: a signed-in user lists, creates and
revokes their own tokens with the accounts API's rules; the secret is shown once."""

from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.http.keys import AUDIT, CONFIG
from support.accounts import ALL_SCOPES, add_token, add_user, basic
from support.browser import screenshot
from support.visitors import forms, signed_in, visitors

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)

SECRET = re.compile(r"wharf_pat_[0-9A-Za-z]{42}")


@pytest.fixture
async def wharf(make_wharf):
    return await make_wharf(auth=None, log={"access_log": True, "level": "debug"})


@pytest.fixture
async def visit(wharf):
    async with visitors(wharf.url) as visit:
        yield visit


async def api(wharf, method: str, path: str, authorization: str | None, body=None):
    headers = {"Authorization": authorization} if authorization else {}
    async with wharf.client.request(method, path, headers=headers,
                                    data=json.dumps(body) if body is not None else None) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text and path.startswith("/api/") else text)


async def create(visitor, note="ci", scopes=("read:packages",), expires="30"):
    await visitor.get("/settings/tokens/new")
    return await visitor.post("/settings/tokens", [("note", note), ("expires", expires)]
                              + [("scopes", s) for s in scopes])


async def test_anonymous_visitors_are_sent_to_sign_in_and_come_back(visit):
    anonymous = visit()
    for path in ("/settings/tokens", "/settings/tokens/new", "/settings/tokens/1/revoke"):
        answer = await anonymous.get(path)
        assert answer.status == 303 and answer.location == f"/signin?next={path}", (path, answer.location)
    answer = await anonymous.get("/tokens")  # the nav's link
    assert answer.status == 302 and answer.location == "/settings/tokens"
    answer = await anonymous.get("/settings/tokens?x=//evil.example")
    assert answer.status == 303 and urlsplit(answer.location).path == "/signin"
    assert parse_qs(urlsplit(answer.location).query)["next"] == ["/settings/tokens?x=//evil.example"]  # a path here
    for path in ("/settings/tokens", "/settings/tokens/1/revoke"):  # no session, no form
        answer = await anonymous.post(path, {"note": "x", "scopes": "read:packages", "expires": "7"}, csrf="x")
        assert answer.status == 403 and "<html" in answer.text.lower()


async def test_the_list_shows_each_token_and_never_a_secret(wharf, visit):
    alice, token_id, secret = await signed_in(visit, wharf, "alice")
    answer = await alice.get("/settings/tokens")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
    assert secret[:14] in answer.text and secret not in answer.text
    assert SECRET.search(answer.text) is None
    row = re.search(rf'<tr class="token state-active" data-token-id="{token_id}">(.*?)</tr>', answer.text, re.S)
    assert row and all(scope in row.group(1) for scope in ALL_SCOPES) and "this session" in row.group(1)
    assert "never" in row.group(1)  # it never expires


async def test_a_note_is_shown_as_text_never_as_markup(wharf, visit):
    alice, _, _ = await signed_in(visit, wharf, "alice")
    answer = await create(alice, note='<script>alert(1)</script><b onmouseover="x">')
    assert answer.status == 201 and "<script>alert" not in answer.text and "<b onmouseover" not in answer.text
    listing = await alice.get("/settings/tokens")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing.text and "<script>alert" not in listing.text


async def test_a_new_token_is_shown_once_and_works(wharf, visit, caplog):
    caplog.set_level(logging.DEBUG)
    alice, _, _ = await signed_in(visit, wharf, "alice")
    answer = await create(alice, note="laptop", scopes=("read:packages", "write:packages"), expires="7")
    assert answer.status == 201, answer.text
    found = SECRET.findall(answer.text)
    assert found and len(set(found)) == 1
    secret = found[0]
    assert answer.headers["Cache-Control"] == "no-store"
    assert f'data-copy="{secret}"' in answer.text and 'class="copy"' in answer.text

    status, own = await api(wharf, "GET", "/api/user/tokens", basic("alice", secret))
    assert status == 200
    made = next(t for t in own if t["note"] == "laptop")
    assert made["scopes"] == ["read:packages", "write:packages"] and made["expires_at"] is not None
    status, _ = await api(wharf, "GET", "/v2/", basic("alice", secret))
    assert status == 200

    for path in ("/settings/tokens", "/settings/tokens/new", f"/settings/tokens/{made['id']}/revoke"):
        later = await alice.get(path)
        assert later.status == 200 and secret not in later.text and SECRET.search(later.text) is None
    assert "laptop" in (await alice.get("/settings/tokens")).text
    audit = wharf.app[AUDIT].path.read_text()
    created = [json.loads(line) for line in audit.splitlines() if '"token.create"' in line]
    assert created[-1]["actor"] == "alice" and created[-1]["remote"] == "127.0.0.1"
    assert created[-1]["note"] == "laptop"
    assert secret not in audit and secret not in caplog.text


async def test_the_secret_is_stored_nowhere_in_clear(wharf, visit):
    alice, _, _ = await signed_in(visit, wharf, "alice")
    answer = await create(alice)
    secret = SECRET.search(answer.text).group(0)
    await alice.get("/settings/tokens")
    files = [p for p in wharf.app[CONFIG].storage.root.rglob("*") if p.is_file()]
    assert any(p.suffix in (".db", ".sqlite", ".sqlite3") or "wal" in p.name for p in files), files
    assert not any(secret.encode() in p.read_bytes() for p in files)


async def test_a_form_without_the_session_csrf_token_changes_nothing(wharf, visit):
    alice, token_id, secret = await signed_in(visit, wharf, "alice")
    await alice.get("/settings/tokens/new")
    fields = {"note": "forged", "scopes": "read:packages", "expires": "7"}
    for csrf in (False, "not-the-token"):
        answer = await alice.post("/settings/tokens", fields, csrf=csrf)
        assert answer.status == 403 and SECRET.search(answer.text) is None
    answer = await alice.post("/settings/tokens", fields, headers={"Origin": "http://evil.example"})
    assert answer.status == 403
    answer = await alice.post(f"/settings/tokens/{token_id}/revoke", csrf=False)
    assert answer.status == 403
    status, own = await api(wharf, "GET", "/api/user/tokens", basic("alice", secret))
    assert status == 200 and [t["note"] for t in own] == [""] and own[0]["state"] == "active"


async def test_a_read_only_session_cannot_mint_a_write_token(wharf, visit):
    reader, _, secret = await signed_in(visit, wharf, "alice", scopes=("read:packages",))
    form = await reader.get("/settings/tokens/new")
    boxes = dict(re.findall(r'<input type="checkbox"[^>]*value="([^"]+)"([^>]*)>', form.text))
    assert "disabled" in boxes["write:packages"] and "disabled" in boxes["delete:packages"]
    assert "disabled" not in boxes["read:packages"]
    answer = await create(reader, note="escalate", scopes=("read:packages", "write:packages"))
    assert answer.status == 403 and "write:packages" in answer.text and SECRET.search(answer.text) is None
    status, own = await api(wharf, "GET", "/api/user/tokens", basic("alice", secret))
    assert [t["note"] for t in own] == [""]
    answer = await create(reader, note="reader", scopes=("read:packages",))
    assert answer.status == 201 and SECRET.search(answer.text)


@pytest.mark.parametrize("fields, words", [
    ({"expires": "30"}, "at least one scope"),
    ({"expires": "30", "scopes": "admin:everything"}, "unknown scope"),
    ({"expires": "soon", "scopes": "read:packages"}, "expires"),
    ({"expires": "0", "scopes": "read:packages"}, "expiry must be"),
    ({"expires": "99999", "scopes": "read:packages"}, "expiry must be"),
    ({"expires": "none", "scopes": "read:packages", "note": "n" * 1001}, "at most 1000"),
])
async def test_a_bad_form_is_shown_again_with_the_reason(wharf, visit, fields, words):
    alice, _, _ = await signed_in(visit, wharf, "alice")
    await alice.get("/settings/tokens/new")
    answer = await alice.post("/settings/tokens", fields)
    assert answer.status == 422 and words in answer.words and SECRET.search(answer.text) is None
    assert any(f.action == "/settings/tokens" for f in forms(answer.text))  # the form again, to correct


async def test_no_expiry_means_the_token_never_expires(wharf, visit):
    alice, _, secret = await signed_in(visit, wharf, "alice")
    answer = await create(alice, note="forever", expires="none")
    assert answer.status == 201
    status, own = await api(wharf, "GET", "/api/user/tokens", basic("alice", secret))
    assert next(t for t in own if t["note"] == "forever")["expires_at"] is None


async def test_a_session_of_a_short_lived_token_cannot_mint_a_lasting_one(wharf, visit):
    add_user(wharf.database, "alice")
    _, secret = add_token(wharf.database, "alice", ALL_SCOPES, expires_at=time.time() + 7 * 86400)
    alice = visit()
    await alice.sign_in("alice", secret)
    for expires in ("none", "30"):
        answer = await create(alice, note="lasting", expires=expires)
        assert answer.status == 422 and "outlive" in answer.words and SECRET.search(answer.text) is None
    answer = await create(alice, note="shorter", expires="6")
    assert answer.status == 201 and SECRET.search(answer.text)


async def test_revoking_asks_then_ends_the_token_on_the_registry_and_the_api(wharf, visit):
    alice, _, _ = await signed_in(visit, wharf, "alice")
    created = await create(alice, note="ci", scopes=("read:packages",))
    secret = SECRET.search(created.text).group(0)
    status, own = await api(wharf, "GET", "/api/user/tokens", basic("alice", secret))
    ci = next(t for t in own if t["note"] == "ci")
    listing = await alice.get("/settings/tokens")
    assert f'href="/settings/tokens/{ci["id"]}/revoke"' in listing.text

    confirm = await alice.get(f"/settings/tokens/{ci['id']}/revoke")
    assert confirm.status == 200 and "ci" in confirm.text
    assert [f for f in forms(confirm.text) if f.method == "post" and f.action.endswith(f"/{ci['id']}/revoke")]
    assert (await api(wharf, "GET", "/v2/", basic("alice", secret)))[0] == 200  # asking changed nothing

    answer = await alice.post(f"/settings/tokens/{ci['id']}/revoke")
    assert answer.status == 303 and answer.location == "/settings/tokens?done=token_revoked"
    after = await alice.follow(answer)
    assert after.status == 200 and "The token was revoked." in after.text
    assert f'data-token-id="{ci["id"]}"' in after.text and 'state-revoked' in after.text
    assert (await api(wharf, "GET", "/v2/", basic("alice", secret)))[0] == 401
    assert (await api(wharf, "GET", "/api/user/tokens", basic("alice", secret)))[0] == 401
    audit = wharf.app[AUDIT].path.read_text()
    revoked = [json.loads(line) for line in audit.splitlines() if '"token.revoke"' in line]
    assert revoked[-1]["token_id"] == ci["id"] and revoked[-1]["actor"] == "alice"


async def test_nobody_revokes_or_sees_another_users_token(wharf, visit):
    alice, _, _ = await signed_in(visit, wharf, "alice")
    bob, bob_token, bob_secret = await signed_in(visit, wharf, "bob")
    assert (await alice.get(f"/settings/tokens/{bob_token}/revoke")).status == 404
    await alice.get("/settings/tokens")
    assert (await alice.post(f"/settings/tokens/{bob_token}/revoke")).status == 404
    for bad in ("0", "abc", "99999999999999999999999"):
        assert (await alice.get(f"/settings/tokens/{bad}/revoke")).status == 404
    assert (await api(wharf, "GET", "/v2/", basic("bob", bob_secret)))[0] == 200
    assert bob_secret[:14] not in (await alice.get("/settings/tokens")).text


async def test_revoking_the_sessions_own_token_signs_the_browser_out(wharf, visit):
    alice, token_id, _ = await signed_in(visit, wharf, "alice")
    await alice.get(f"/settings/tokens/{token_id}/revoke")
    answer = await alice.post(f"/settings/tokens/{token_id}/revoke")
    assert answer.status == 303
    after = await alice.follow(answer)
    assert after.status == 303 and after.location.startswith("/signin?next=/settings/tokens")


async def test_in_a_browser_create_copy_use_and_revoke_a_token(wharf, browser):
    add_user(wharf.database, "alice")
    from support.accounts import add_token

    _, first = add_token(wharf.database, "alice", ALL_SCOPES)
    context = await browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = await context.new_page()
    await page.goto(wharf.url + "/settings/tokens")
    assert "/signin" in page.url
    await page.fill("input[type=text]", "alice")
    await page.fill("input[type=password]", first)
    await page.locator("form[method=post] button[type=submit]").first.click()
    await page.wait_for_url("**/settings/tokens**")

    await page.get_by_role("link", name="Generate new token").click()
    await page.get_by_label("Note").fill("deploy key")
    await page.get_by_label("Expiry").select_option("90")
    await page.get_by_label(re.compile("write:packages")).check()
    await page.get_by_role("button", name="Generate token").click()
    secret = await page.locator("input.secret").input_value()
    assert SECRET.fullmatch(secret)
    await page.locator("button.copy").click()
    assert await page.evaluate("navigator.clipboard.readText()") == secret

    status, own = await api(wharf, "GET", "/api/user/tokens", basic("alice", secret))
    assert status == 200 and "deploy key" in [t["note"] for t in own]

    await page.goto(wharf.url + "/settings/tokens")
    assert secret not in await page.content()
    await screenshot(page, "tokens")
    row = page.locator("tr.token", has_text="deploy key")
    await row.get_by_role("link", name=re.compile("Revoke")).click()
    await page.get_by_role("button", name="Revoke this token").click()
    await page.wait_for_url("**/settings/tokens?done=token_revoked")
    assert "The token was revoked." in await page.content()
    assert await page.locator("tr.token", has_text="deploy key").get_attribute("class") == "token state-revoked"
    assert (await api(wharf, "GET", "/api/user/tokens", basic("alice", secret)))[0] == 401
    assert (await api(wharf, "GET", "/v2/", basic("alice", secret)))[0] == 401
    await context.close()
