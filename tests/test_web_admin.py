"""The admin pages (proxy.web.admin_pages) under a real Wharf: server admins add users and
organisations, change members' roles and revoke any user's tokens; nobody else gets in."""

from __future__ import annotations

import json
import re

import pytest

from proxy.http.keys import AUDIT
from support.accounts import ALL_SCOPES, add_org, add_token, add_user, basic
from support.browser import screenshot
from support.visitors import forms, signed_in, visitors

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)

SECRET = re.compile(r"wharf_pat_[0-9A-Za-z]{42}")


@pytest.fixture
async def wharf(make_wharf):
    return await make_wharf(auth=None)


@pytest.fixture
async def visit(wharf):
    async with visitors(wharf.url) as visit:
        yield visit


async def api(wharf, method: str, path: str, authorization: str | None = None, body=None):
    headers = {"Authorization": authorization or basic(*wharf.admin)}
    async with wharf.client.request(method, path, headers=headers,
                                    data=json.dumps(body) if body is not None else None) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text and path.startswith("/api/") else text)


async def users(wharf) -> dict[str, dict]:
    status, listed = await api(wharf, "GET", "/api/admin/users")
    assert status == 200
    return {u["name"]: u for u in listed}


async def orgs(wharf) -> dict[str, dict]:
    status, listed = await api(wharf, "GET", "/api/admin/orgs")
    assert status == 200
    return {o["name"]: o["members"] for o in listed}


def audit_records(wharf, action: str) -> list[dict]:
    return [json.loads(line) for line in wharf.app[AUDIT].path.read_text().splitlines()
            if f'"action":"{action}"' in line]


async def as_admin(visit, wharf, scopes=ALL_SCOPES):
    admin, _, _ = await signed_in(visit, wharf, "root", scopes=scopes, admin=True)
    await admin.get("/admin")
    return admin


GETS = ["/admin", "/admin/users/alice/tokens", "/admin/users/alice/tokens/new", "/admin/tokens/{token}/revoke"]
POSTS = [("/admin/users", {"name": "mallory2", "admin": "on"}), ("/admin/orgs", {"name": "evilcorp", "owner": "bob"}),
         ("/admin/orgs/acme/members", {"user": "bob", "role": "owner"}),
         ("/admin/users/alice/tokens", {"scopes": "read:packages", "expires": "none", "note": "x"}),
         ("/admin/tokens/{token}/revoke", {})]


async def test_anonymous_visitors_are_sent_to_sign_in(wharf, visit):
    anonymous = visit()
    for path in GETS:
        path = path.format(token=1)
        answer = await anonymous.get(path)
        assert answer.status == 303 and answer.location == f"/signin?next={path}", (path, answer.location)
    for path, fields in POSTS:
        assert (await anonymous.post(path.format(token=1), fields, csrf="x")).status == 403


async def test_users_who_are_not_server_admins_get_403_everywhere_and_change_nothing(wharf, visit):
    add_user(wharf.database, "alice")
    add_user(wharf.database, "bob")
    add_org(wharf.database, "acme", {"alice": "owner"})
    alice_token, alice_secret = add_token(wharf.database, "alice")
    bob, _, _ = await signed_in(visit, wharf, "bob")  # every scope, but not a server admin
    before_users, before_orgs = await users(wharf), await orgs(wharf)
    await bob.get("/settings/tokens")  # a page with bob's session's form token
    assert bob.csrf
    for path in GETS:
        answer = await bob.get(path.format(token=alice_token))
        assert answer.status == 403 and "not a server admin" in answer.text, path
        assert "<html" in answer.text.lower() and alice_secret[:14] not in answer.text
    for path, fields in POSTS:
        answer = await bob.post(path.format(token=alice_token), fields)
        assert answer.status == 403 and "not a server admin" in answer.text, path
        assert SECRET.search(answer.text) is None
    assert await users(wharf) == before_users and await orgs(wharf) == before_orgs
    status, listed = await api(wharf, "GET", "/api/admin/users/alice/tokens")
    assert [t["state"] for t in listed] == ["active"]
    assert (await api(wharf, "GET", "/v2/", basic("alice", alice_secret)))[0] == 200


async def test_an_admin_adds_users_and_sees_them_listed(wharf, visit):
    admin = await as_admin(visit, wharf)
    answer = await admin.post("/admin/users", {"name": "alice"})
    assert answer.status == 303 and answer.location == "/admin?done=user_created"
    answer = await admin.post("/admin/users", {"name": "carol", "admin": "on"})
    assert answer.status == 303
    listed = await users(wharf)
    assert listed["alice"]["admin"] is False and listed["carol"]["admin"] is True
    page = await admin.follow(answer)
    assert page.status == 200 and "The user was created." in page.text
    rows = dict(re.findall(r'<tr class="user" data-user="([^"]+)">(.*?)</tr>', page.text, re.S))
    assert "server admin" in rows["carol"] and "server admin" not in rows["alice"]
    assert 'href="/admin/users/alice/tokens"' in rows["alice"]
    added = audit_records(wharf, "user.add")
    assert [(r["user"], r["actor"], r["remote"]) for r in added[-2:]] == [
        ("alice", "root", "127.0.0.1"), ("carol", "root", "127.0.0.1")]


@pytest.mark.parametrize("name, words", [("Alice", "not a valid name"), ("library", "official images"),
                                         ("root", "taken"), ("", "not a valid name")])
async def test_a_bad_or_taken_name_is_shown_with_the_reason(wharf, visit, name, words):
    admin = await as_admin(visit, wharf)
    before = await users(wharf)
    answer = await admin.post("/admin/users", {"name": name})
    assert answer.status == 422 and words in answer.words
    assert any(f.action == "/admin/users" for f in forms(answer.text))
    assert await users(wharf) == before


async def test_an_admin_adds_an_organisation_and_sets_members_roles(wharf, visit):
    add_user(wharf.database, "alice")
    add_user(wharf.database, "bob")
    admin = await as_admin(visit, wharf)
    answer = await admin.post("/admin/orgs", {"name": "acme", "owner": "alice"})
    assert answer.status == 303 and answer.location == "/admin?done=org_created"
    assert (await orgs(wharf)) == {"acme": {"alice": "owner"}}
    page = await admin.follow(answer)
    assert [f for f in forms(page.text) if f.action == "/admin/orgs/acme/members"]

    answer = await admin.post("/admin/orgs/acme/members", {"user": "bob", "role": "member"})
    assert answer.status == 303 and answer.location == "/admin?done=member_changed"
    assert (await orgs(wharf))["acme"] == {"alice": "owner", "bob": "member"}
    await admin.post("/admin/orgs/acme/members", {"user": "bob", "role": "owner"})
    await admin.post("/admin/orgs/acme/members", {"user": "alice", "role": "member"})
    assert (await orgs(wharf))["acme"] == {"alice": "member", "bob": "owner"}
    roles = audit_records(wharf, "org.member")
    assert [(r["user"], r["role"], r["actor"]) for r in roles] == [
        ("bob", "member", "root"), ("bob", "owner", "root"), ("alice", "member", "root")]
    status, body = await api(wharf, "GET", "/api/admin/users")  # bob's new role stands at once
    assert {u["name"]: u["orgs"] for u in body}["bob"] == {"acme": "owner"}


@pytest.mark.parametrize("path, fields, status, words", [
    ("/admin/orgs", {"name": "acme2", "owner": "nobody"}, 422, "no user 'nobody'"),
    ("/admin/orgs", {"name": "alice", "owner": "alice"}, 422, "taken"),
    ("/admin/orgs/acme/members", {"user": "nobody", "role": "member"}, 422, "no user 'nobody'"),
    ("/admin/orgs/acme/members", {"user": "alice", "role": "king"}, 422, "unknown role"),
    ("/admin/orgs/acme/members", {"user": "alice", "role": "member"}, 422, "last owner"),
    ("/admin/orgs/nope/members", {"user": "alice", "role": "member"}, 404, "no organisation 'nope'"),
])
async def test_bad_organisation_forms_change_nothing(wharf, visit, path, fields, status, words):
    add_user(wharf.database, "alice")
    add_org(wharf.database, "acme", {"alice": "owner"})
    admin = await as_admin(visit, wharf)
    before = await orgs(wharf)
    answer = await admin.post(path, fields)
    assert answer.status == status and words in answer.words
    assert await orgs(wharf) == before


async def test_admin_forms_need_the_session_csrf_token(wharf, visit):
    admin = await as_admin(visit, wharf)
    for csrf in (False, "forged"):
        assert (await admin.post("/admin/users", {"name": "mallory"}, csrf=csrf)).status == 403
    assert (await admin.post("/admin/users", {"name": "mallory"},
                             headers={"Origin": "http://evil.example"})).status == 403
    assert "mallory" not in await users(wharf)


async def test_an_admin_makes_a_token_for_a_user_shown_once_and_revokes_it(wharf, visit):
    add_user(wharf.database, "alice")
    admin = await as_admin(visit, wharf)
    await admin.get("/admin/users/alice/tokens/new")
    answer = await admin.post("/admin/users/alice/tokens", [("note", "handover"), ("expires", "30"),
                                                             ("scopes", "read:packages")])
    assert answer.status == 201
    secret = SECRET.search(answer.text).group(0)
    assert (await api(wharf, "GET", "/v2/", basic("alice", secret)))[0] == 200
    listing = await admin.get("/admin/users/alice/tokens")
    assert listing.status == 200 and "handover" in listing.text and secret not in listing.text
    token_id = int(re.search(r'data-token-id="(\d+)"', listing.text).group(1))
    created = audit_records(wharf, "token.create")[-1]
    assert created["user"] == "alice" and created["actor"] == "root"

    confirm = await admin.get(f"/admin/tokens/{token_id}/revoke")
    assert confirm.status == 200 and "handover" in confirm.text and secret not in confirm.text
    assert 'href="/admin/users/alice/tokens">Cancel' in confirm.text
    answer = await admin.post(f"/admin/tokens/{token_id}/revoke")
    assert answer.status == 303 and answer.location == "/admin/users/alice/tokens?done=token_revoked"
    assert (await api(wharf, "GET", "/v2/", basic("alice", secret)))[0] == 401
    assert (await api(wharf, "GET", "/api/user/tokens", basic("alice", secret)))[0] == 401
    revoked = audit_records(wharf, "token.revoke")[-1]
    assert revoked["token_id"] == token_id and revoked["actor"] == "root" and revoked["remote"] == "127.0.0.1"
    assert (await admin.get("/admin/tokens/999999/revoke")).status == 404
    assert (await admin.get("/admin/users/nobody/tokens")).status == 404


async def test_an_admin_on_a_read_only_session_cannot_mint_a_write_token(wharf, visit):
    add_user(wharf.database, "alice")
    admin = await as_admin(visit, wharf, scopes=("read:packages",))
    await admin.get("/admin/users/alice/tokens/new")
    answer = await admin.post("/admin/users/alice/tokens", [("expires", "7"), ("scopes", "write:packages")])
    assert answer.status == 403 and "write:packages" in answer.text and SECRET.search(answer.text) is None
    status, listed = await api(wharf, "GET", "/api/admin/users/alice/tokens")
    assert listed == []


async def test_in_a_browser_an_admin_adds_a_user_and_an_organisation(wharf, browser):
    add_user(wharf.database, "root", admin=True)
    _, secret = add_token(wharf.database, "root", ALL_SCOPES)
    page = await browser.new_page()
    await page.goto(wharf.url + "/admin")
    assert "/signin" in page.url
    await page.fill("input[type=text]", "root")
    await page.fill("input[type=password]", secret)
    await page.locator("form[method=post] button[type=submit]").first.click()
    await page.wait_for_url("**/admin**")

    await page.locator("#user-name").fill("alice")
    await page.get_by_role("button", name="Add user").click()
    await page.wait_for_url("**/admin?done=user_created")
    await page.locator("#user-name").fill("bob")
    await page.get_by_label("Server admin").check()
    await page.get_by_role("button", name="Add user").click()
    await page.wait_for_url("**/admin?done=user_created")
    await page.locator("#org-name").fill("acme")
    await page.locator("#org-owner").fill("alice")
    await page.get_by_role("button", name="Add organisation").click()
    await page.wait_for_url("**/admin?done=org_created")
    await page.locator("#member-acme").fill("bob")
    await page.get_by_role("button", name="Add to acme").click()
    await page.wait_for_url("**/admin?done=member_changed")
    assert "The membership was changed." in await page.content()
    assert "server admin" in await page.locator('tr.user[data-user="bob"]').inner_text()
    members = page.locator('article.org[data-org="acme"] tr.member')
    assert [m.split()[:2] for m in await members.all_inner_texts()] == [["alice", "owner"], ["bob", "member"]]
    await screenshot(page, "admin")
    assert (await orgs(wharf)) == {"acme": {"alice": "owner", "bob": "member"}}
    await page.get_by_role("button", name="Make bob owner of acme").click()
    await page.wait_for_url("**/admin?done=member_changed")
    await page.get_by_role("button", name="Make alice member of acme").click()
    await page.wait_for_url("**/admin?done=member_changed")
    assert [m.split()[:2] for m in await members.all_inner_texts()] == [["alice", "member"], ["bob", "owner"]]
    assert (await orgs(wharf)) == {"acme": {"alice": "member", "bob": "owner"}}
    listed = await users(wharf)
    assert listed["bob"]["admin"] is True and listed["alice"]["orgs"] == {"acme": "member"}
