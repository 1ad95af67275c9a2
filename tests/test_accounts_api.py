"""The accounts API (proxy.http.admin_api) under a real Wharf: server admins manage users,
organisations and tokens; users their own tokens; GitHub-style JSON errors."""

from __future__ import annotations

import hashlib
import json

import pytest

from proxy.http.keys import AUDIT
from proxy.registry.accounts import new_secret
from support.accounts import basic


@pytest.fixture
async def wharf(make_wharf):
    return await make_wharf(auth=None)  # requests say who they are themselves


def as_admin(wharf) -> dict[str, str]:
    return wharf.admin_headers


async def call(wharf, method: str, path: str, headers=None, body=None, raw: bytes | None = None):
    """(status, decoded JSON or None, response headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with wharf.client.request(method, path, headers=headers or {}, data=data) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None, response.headers


async def new_user(wharf, name: str, scopes=("read:packages",), admin: bool = False) -> tuple[dict, str]:
    status, user, _ = await call(wharf, "POST", "/api/admin/users", as_admin(wharf), {"name": name, "admin": admin})
    assert status == 201, user
    status, token, _ = await call(wharf, "POST", f"/api/admin/users/{name}/tokens", as_admin(wharf),
                                  {"scopes": list(scopes)})
    assert status == 201, token
    return token, basic(name, token["token"])


async def test_an_admin_manages_users_orgs_and_tokens(wharf):
    status, alice, _ = await call(wharf, "POST", "/api/admin/users", as_admin(wharf), {"name": "alice"})
    assert status == 201 and alice["name"] == "alice" and alice["admin"] is False
    assert alice["created_at"].endswith("Z")
    await call(wharf, "POST", "/api/admin/users", as_admin(wharf), {"name": "bob", "admin": False})
    status, org, _ = await call(wharf, "POST", "/api/admin/orgs", as_admin(wharf), {"name": "acme", "owner": "alice"})
    assert status == 201 and org["members"] == {"alice": "owner"}
    status, member, _ = await call(wharf, "PUT", "/api/admin/orgs/acme/members/bob", as_admin(wharf),
                                   {"role": "member"})
    assert status == 200 and member == {"org": "acme", "user": "bob", "role": "member"}
    status, users, _ = await call(wharf, "GET", "/api/admin/users", as_admin(wharf))
    assert status == 200
    assert {u["name"]: (u["admin"], u["orgs"]) for u in users} == {
        "admin": (True, {}), "alice": (False, {"acme": "owner"}), "bob": (False, {"acme": "member"})}
    status, orgs, _ = await call(wharf, "GET", "/api/admin/orgs", as_admin(wharf))
    assert [(o["name"], o["members"]) for o in orgs] == [("acme", {"alice": "owner", "bob": "member"})]

    status, token, _ = await call(wharf, "POST", "/api/admin/users/alice/tokens", as_admin(wharf),
                                  {"scopes": ["write:packages", "read:packages"], "expires_days": 7, "note": "ci"})
    assert status == 201
    secret = token["token"]
    assert secret.startswith("wharf_pat_") and token["hint"] == secret[:14]
    assert token["scopes"] == ["read:packages", "write:packages"] and token["state"] == "active"
    assert token["note"] == "ci" and token["expires_at"] is not None and token["user"] == "alice"
    status, listed, _ = await call(wharf, "GET", "/api/admin/users/alice/tokens", as_admin(wharf))
    assert [t["id"] for t in listed] == [token["id"]] and "token" not in listed[0]
    assert secret not in json.dumps(listed)
    # the new token signs alice in
    status, own, _ = await call(wharf, "GET", "/api/user/tokens", {"Authorization": basic("alice", secret)})
    assert status == 200 and [t["id"] for t in own] == [token["id"]]
    # revoked by the admin: refused at once
    status, _, _ = await call(wharf, "DELETE", f"/api/admin/tokens/{token['id']}", as_admin(wharf))
    assert status == 204
    status, body, headers = await call(wharf, "GET", "/api/user/tokens", {"Authorization": basic("alice", secret)})
    assert status == 401 and "message" in body
    status, listed, _ = await call(wharf, "GET", "/api/admin/users/alice/tokens", as_admin(wharf))
    assert listed[0]["state"] == "revoked" and listed[0]["revoked_at"] is not None


async def test_changes_are_audited_with_who_and_from_where(wharf):
    token, _ = await new_user(wharf, "alice")
    audit = wharf.app[AUDIT].path.read_text()
    records = [json.loads(line) for line in audit.splitlines()]
    created = [r for r in records if r["action"] == "token.create" and r["user"] == "alice"]
    assert created and created[0]["actor"] == "admin" and created[0]["remote"] == "127.0.0.1"
    assert token["token"] not in audit and hashlib.sha256(token["token"].encode()).hexdigest() not in audit


ADMIN_ROUTES = [("GET", "/api/admin/users"), ("POST", "/api/admin/users"), ("GET", "/api/admin/orgs"),
                ("POST", "/api/admin/orgs"), ("PUT", "/api/admin/orgs/acme/members/bob"),
                ("GET", "/api/admin/users/alice/tokens"), ("POST", "/api/admin/users/alice/tokens"),
                ("DELETE", "/api/admin/tokens/1")]
USER_ROUTES = [("GET", "/api/user/tokens"), ("POST", "/api/user/tokens"), ("DELETE", "/api/user/tokens/1")]


async def test_anonymous_callers_are_asked_to_sign_in(wharf):
    for method, path in ADMIN_ROUTES + USER_ROUTES:
        status, body, headers = await call(wharf, method, path, body={"name": "x"})
        assert status == 401, (method, path)
        assert "authentication" in body["message"]
        assert headers["WWW-Authenticate"].startswith("Basic")


async def test_a_wrong_token_is_401_in_json(wharf):
    await new_user(wharf, "alice")
    for header in (basic("alice", new_secret()), basic("alice", "wharf_pat_nonsense")):
        status, body, headers = await call(wharf, "GET", "/api/user/tokens", {"Authorization": header})
        assert status == 401 and body["message"] and headers["WWW-Authenticate"].startswith("Basic")


async def test_an_upstream_password_is_no_wharf_account(wharf):
    await new_user(wharf, "alice")
    status, body, _ = await call(wharf, "GET", "/api/user/tokens", {"Authorization": basic("alice", "hunter2")})
    assert status == 401


async def test_users_who_are_not_admins_are_refused(wharf):
    _, alice = await new_user(wharf, "alice", scopes=("read:packages", "write:packages", "delete:packages"))
    for method, path in ADMIN_ROUTES:
        status, body, _ = await call(wharf, method, path, {"Authorization": alice}, body={"name": "x"})
        assert status == 403, (method, path)
        assert body["message"] == "alice is not a server admin"
    status, users, _ = await call(wharf, "GET", "/api/admin/users", as_admin(wharf))
    assert [u["name"] for u in users] == ["admin", "alice"]


@pytest.mark.parametrize("path, body, words", [
    ("/api/admin/users", {"name": "Alice"}, "not a valid name"),
    ("/api/admin/users", {"name": "library"}, "official images"),
    ("/api/admin/users", {"name": "admin"}, "taken"),
    ("/api/admin/users", {}, "'name' is required"),
    ("/api/admin/users", {"name": 7}, "'name' must be"),
    ("/api/admin/users", {"name": "carol", "admin": "yes"}, "'admin' must be true or false"),
    ("/api/admin/users", [1, 2], "JSON object"),
    ("/api/admin/orgs", {"name": "acme"}, "'owner' is required"),
    ("/api/admin/users/admin/tokens", {"scopes": ["read:packages", "admin:org"]}, "unknown scope"),
    ("/api/admin/users/admin/tokens", {"scopes": []}, "at least one scope"),
    ("/api/admin/users/admin/tokens", {"scopes": "read:packages"}, "'scopes' must be a list"),
    ("/api/admin/users/admin/tokens", {"scopes": [1]}, "list of strings"),
    ("/api/admin/users/admin/tokens", {"scopes": ["read:packages"], "expires_days": 0}, "whole number of days"),
    ("/api/admin/users/admin/tokens", {"scopes": ["read:packages"], "expires_days": "7"}, "whole number"),
    ("/api/admin/users/admin/tokens", {"scopes": ["read:packages"], "note": 5}, "'note' must be a string"),
])
async def test_bad_fields_are_422_naming_them(wharf, path, body, words):
    status, answer, _ = await call(wharf, "POST", path, as_admin(wharf), body)
    assert status == 422 and words in answer["message"], answer


async def test_a_body_that_is_not_json_is_422(wharf):
    for raw in (b"{", b"\xff\xfe", b""):
        status, answer, _ = await call(wharf, "POST", "/api/admin/users", as_admin(wharf), raw=raw)
        assert status == 422 and "message" in answer


async def test_a_huge_body_is_refused_unread(wharf):
    status, answer, _ = await call(wharf, "POST", "/api/admin/users", as_admin(wharf),
                                   raw=b'{"name": "' + b"a" * 200_000 + b'"}')
    assert status == 413 and "larger" in answer["message"]


async def test_unknown_users_orgs_and_tokens_are_404(wharf):
    for method, path, body in [("GET", "/api/admin/users/ghost/tokens", None),
                               ("POST", "/api/admin/users/ghost/tokens", {"scopes": ["read:packages"]}),
                               ("POST", "/api/admin/orgs", {"name": "acme", "owner": "ghost"}),
                               ("PUT", "/api/admin/orgs/nope/members/admin", {"role": "member"}),
                               ("DELETE", "/api/admin/tokens/999", None)]:
        status, answer, _ = await call(wharf, method, path, as_admin(wharf), body)
        assert status == 404, (method, path, answer)
        assert answer["message"]


async def test_a_member_role_must_be_owner_or_member(wharf):
    await new_user(wharf, "alice")
    await call(wharf, "POST", "/api/admin/orgs", as_admin(wharf), {"name": "acme", "owner": "admin"})
    status, answer, _ = await call(wharf, "PUT", "/api/admin/orgs/acme/members/alice", as_admin(wharf),
                                   {"role": "admin"})
    assert status == 422 and "owner or member" in answer["message"]


async def test_users_manage_their_own_tokens(wharf):
    first, alice = await new_user(wharf, "alice", scopes=("read:packages", "write:packages"))
    _, bob = await new_user(wharf, "bob")
    status, second, _ = await call(wharf, "POST", "/api/user/tokens", {"Authorization": alice},
                                   {"scopes": ["read:packages"], "note": "laptop"})
    assert status == 201 and second["user"] == "alice" and second["token"].startswith("wharf_pat_")
    status, own, _ = await call(wharf, "GET", "/api/user/tokens", {"Authorization": alice})
    assert [t["id"] for t in own] == [first["id"], second["id"]]
    assert all("token" not in t for t in own)
    # bob neither sees nor revokes alice's tokens
    status, theirs, _ = await call(wharf, "GET", "/api/user/tokens", {"Authorization": bob})
    assert [t["user"] for t in theirs] == ["bob"]
    status, answer, _ = await call(wharf, "DELETE", f"/api/user/tokens/{second['id']}", {"Authorization": bob})
    assert status == 404
    status, _, _ = await call(wharf, "GET", "/api/user/tokens", {"Authorization": basic("alice", second["token"])})
    assert status == 200
    # alice revokes it: refused at once
    status, _, _ = await call(wharf, "DELETE", f"/api/user/tokens/{second['id']}", {"Authorization": alice})
    assert status == 204
    status, _, _ = await call(wharf, "GET", "/api/user/tokens", {"Authorization": basic("alice", second["token"])})
    assert status == 401


async def test_a_token_cannot_mint_a_stronger_one(wharf):
    _, reader = await new_user(wharf, "alice", scopes=("read:packages",))
    status, answer, _ = await call(wharf, "POST", "/api/user/tokens", {"Authorization": reader},
                                   {"scopes": ["read:packages", "write:packages"]})
    assert status == 403 and "write:packages" in answer["message"]
    status, own, _ = await call(wharf, "GET", "/api/user/tokens", {"Authorization": reader})
    assert len(own) == 1


async def test_a_token_cannot_outlive_the_token_that_makes_it(wharf):
    status, _, _ = await call(wharf, "POST", "/api/admin/users", as_admin(wharf), {"name": "alice"})
    status, short, _ = await call(wharf, "POST", "/api/admin/users/alice/tokens", as_admin(wharf),
                                  {"scopes": ["read:packages"], "expires_days": 7})
    assert status == 201
    alice = {"Authorization": basic("alice", short["token"])}
    for body in ({"scopes": ["read:packages"]}, {"scopes": ["read:packages"], "expires_days": 30}):
        status, answer, _ = await call(wharf, "POST", "/api/user/tokens", alice, body)
        assert status == 422 and "outlive" in answer["message"], answer
    status, answer, _ = await call(wharf, "POST", "/api/user/tokens", alice,
                                   {"scopes": ["read:packages"], "expires_days": 6})
    assert status == 201, answer
    status, own, _ = await call(wharf, "GET", "/api/user/tokens", alice)
    assert len(own) == 2


async def test_a_new_token_works_on_the_registry(wharf):
    token, alice = await new_user(wharf, "alice", scopes=("read:packages", "write:packages"))
    async with wharf.client.get("/v2/", headers={"Authorization": alice}) as response:
        assert response.status == 200
    async with wharf.client.post("/v2/alice/app/blobs/uploads/", headers={"Authorization": alice}) as response:
        assert response.status == 202


async def test_a_bearer_token_signs_in_without_a_user_name(wharf):
    token, _ = await new_user(wharf, "alice")
    bearer = {"Authorization": f"Bearer {token['token']}"}
    status, own, _ = await call(wharf, "GET", "/api/user/tokens", bearer)
    assert status == 200 and [t["user"] for t in own] == ["alice"]
    await call(wharf, "DELETE", f"/api/admin/tokens/{token['id']}", as_admin(wharf))
    status, body, headers = await call(wharf, "GET", "/api/user/tokens", bearer)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    status, body, _ = await call(wharf, "GET", "/api/user/tokens", {"Authorization": f"Bearer {new_secret()}"})
    assert status == 401
