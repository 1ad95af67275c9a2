"""Attacks on the access model of local packages (issue 9): each test is one hole found in review,
asserting what the attacker should see now that it is closed."""

from __future__ import annotations

import base64
import json

from proxy.http.keys import AUDIT
from support.accounts import add_org, add_token, add_user, basic
from support.images import MANIFEST_ACCEPT, make_image, push_image

READ_ONLY = ("read:packages",)
EVERYTHING = ("read:packages", "write:packages", "delete:packages")


async def test_a_read_only_admin_token_cannot_mint_a_token_with_more_scopes(make_wharf):
    """A leaked read-only token of a server admin must not become a write token through the
    admin API (for the admin or for anyone else)."""
    wharf = await make_wharf(auth=None)
    add_user(wharf.database, "root", admin=True)
    add_user(wharf.database, "alice")
    _, token = add_token(wharf.database, "root", READ_ONLY)
    headers = {"Authorization": basic("root", token)}
    for user in ("root", "alice"):
        resp = await wharf.client.post(f"/api/admin/users/{user}/tokens", headers=headers,
                                       data=json.dumps({"scopes": list(EVERYTHING)}))
        assert resp.status == 403, (user, await resp.text())
        assert "write:packages" in (await resp.json())["message"]
    # within its own scopes it still works
    resp = await wharf.client.post("/api/admin/users/alice/tokens", headers=headers,
                                   data=json.dumps({"scopes": list(READ_ONLY)}))
    assert resp.status == 201


async def test_a_wharf_token_in_the_basic_user_name_never_reaches_an_upstream(make_wharf, fake_upstream):
    """``docker login -u wharf_pat_… -p x`` (the token as user name, as git takes GitHub's) and a
    Wharf-signed token as a Basic password are Wharf secrets: refused, never presented upstream."""
    fake = await fake_upstream()
    fake.require_bearer(users={"hubuser": "hub-pw"}, private=set())
    fake.add_image("library/alpine", make_image("upstream-alpine", (200,)), tag="3")
    wharf = await make_wharf(named_upstreams={"docker.io": fake.url}, auth=None)
    add_user(wharf.database, "alice")
    _, token = add_token(wharf.database, "alice", EVERYTHING)
    resp = await wharf.client.get("/token", params={"service": "wharf"},
                                  headers={"Authorization": basic("alice", token)})
    signed = (await resp.json())["token"]
    for header in (basic(token, "x-oauth-basic"), basic(token, ""), basic("alice", signed)):
        resp = await wharf.client.get("/token", params={"service": "wharf"}, headers={"Authorization": header})
        assert resp.status == 401, await resp.text()
        resp = await wharf.client.get("/v2/docker.io/alpine/manifests/3",
                                      headers={"Authorization": header, "Accept": MANIFEST_ACCEPT})
        assert resp.status == 401, await resp.text()
    sent = [r.headers.get("Authorization", "") for r in fake.requests]
    decoded = [base64.b64decode(h[6:]).decode() for h in sent if h.startswith("Basic ")]
    assert not any(token in h or signed in h for h in sent + decoded), sent
    path = wharf.app[AUDIT].path
    audit = path.read_text() if path.exists() else ""
    assert token not in audit and signed not in audit


async def test_a_deleted_packages_blobs_do_not_reach_the_next_owner_of_its_name(make_wharf):
    """An organisation's private package is deleted; another member pushes a new package under
    the same name. The old package's layers stay unreadable to them (by digest, or mounted)."""
    wharf = await make_wharf(auth=None)
    for name in ("owner", "member"):
        add_user(wharf.database, name)
    add_org(wharf.database, "team", {"owner": "owner", "member": "member"})
    _, owner = add_token(wharf.database, "owner", EVERYTHING)
    _, member = add_token(wharf.database, "member", EVERYTHING)
    secret = make_image("the-old-secret", (300, 400))
    await push_image(wharf.url, "team/app", secret, tag="v1", auth=("owner", owner))
    resp = await wharf.client.delete("/api/orgs/team/packages/container/app",
                                     headers={"Authorization": basic("owner", owner)})
    assert resp.status == 204, await resp.text()
    await push_image(wharf.url, "team/app", make_image("the-new-one", (200,)), tag="v1", auth=("member", member))
    headers = {"Authorization": basic("member", member)}
    for layer in secret.layers:
        resp = await wharf.client.get(f"/v2/team/app/blobs/{layer.digest}", headers=headers)
        assert resp.status == 404, layer.digest
        resp = await wharf.client.post(f"/v2/member/loot/blobs/uploads/?mount={layer.digest}", headers=headers)
        assert resp.status == 202, layer.digest  # no mount: an upload session


async def test_an_unowned_namespace_with_only_private_packages_looks_like_no_namespace(make_wharf):
    """``/api/users/NAME/packages`` for a name that is no user's: 404 unless the caller may read a
    package there, so anonymous callers cannot probe which unowned namespaces hold private packages."""
    wharf = await make_wharf(auth=None, local_namespaces=["corp"])
    await push_image(wharf.url, "corp/secret-app", make_image("corp-secret", (200,)), tag="v1",
                     auth=tuple(wharf.admin))
    for owner in ("corp", "nobody-here"):
        resp = await wharf.client.get(f"/api/users/{owner}/packages", params={"package_type": "container"})
        assert resp.status == 404, (owner, await resp.text())
    resp = await wharf.client.get("/api/users/corp/packages", params={"package_type": "container"},
                                  headers=wharf.admin_headers)
    assert resp.status == 200 and [p["name"] for p in await resp.json()] == ["secret-app"]


async def test_a_token_id_out_of_the_databases_range_is_not_found_not_a_500(make_wharf):
    """``DELETE /api/user/tokens/<huge>`` (and the admin's) is 404 in GitHub's form, never 500."""
    wharf = await make_wharf(auth=None)
    for path in ("/api/user/tokens/99999999999999999999999999", "/api/admin/tokens/99999999999999999999999999",
                 "/api/user/tokens/-1", "/api/user/tokens/%C2%B2"):
        resp = await wharf.client.delete(path, headers=wharf.admin_headers)
        assert resp.status == 404, (path, await resp.text())
        assert "message" in await resp.json()
