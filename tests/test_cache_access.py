"""Who may use the cache's API, and what ``_catalog`` shows of the cache.

Every ``/api/cache/`` route: anonymous 401 (with a Basic challenge), a signed-in user who is no
server admin 403, a server admin's token without the route's scope 403 (purge: delete:packages,
warm: write:packages). ``_catalog`` lists cached repositories with a public tag to anyone who may
pull through Wharf, never one cached with a client's own upstream credential."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

from support.accounts import add_token, add_user, basic
from support.cache import pull
from support.images import make_image, push_image

from proxy.http import keys

ROUTES = (("GET", "/api/cache/repositories", None, None),
          ("POST", "/api/cache/purge", {"upstream": "UPSTREAM", "dry_run": True}, "delete:packages"),
          ("POST", "/api/cache/warm", {"images": ["UPSTREAM/team/app:v1"]}, "write:packages"))


async def test_each_route_is_for_server_admins_with_the_scope(fake_upstream, make_wharf):
    fake = await fake_upstream()
    fake.add_image("team/app", make_image("access-app", (100,)), tag="v1")
    wharf = await make_wharf(fake.url, auth=None)
    host = wharf.upstream_name(fake.url)
    db = wharf.database
    add_user(db, "bob")
    _, bob = add_token(db, "bob")
    _, admin_read = add_token(db, "admin", scopes=("read:packages",))
    users = {"bob": {"Authorization": basic("bob", bob)},
             "admin read-only": {"Authorization": basic("admin", admin_read)},
             "admin": wharf.admin_headers}
    for method, path, body, scope in ROUTES:
        body = {k: (v.replace("UPSTREAM", host) if isinstance(v, str) else [i.replace("UPSTREAM", host) for i in v]
                    if isinstance(v, list) else v) for k, v in (body or {}).items()} if body else None

        async def call(headers: dict) -> tuple[int, dict, dict]:
            resp = await wharf.client.request(method, path, json=body, headers=headers)
            return resp.status, dict(resp.headers), await resp.json()

        status, headers, answer = await call({})
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), (path, answer)
        assert "message" in answer
        status, _, answer = await call(users["bob"])
        assert status == 403 and "not a server admin" in answer["message"], (path, answer)
        bogus = "Basic " + base64.b64encode(b"admin:wharf_pat_bogus").decode()
        status, _, answer = await call({"Authorization": bogus})
        assert status == 401, (path, answer)
        status, _, answer = await call(users["admin read-only"])
        if scope is None:
            assert status == 200, (path, answer)
        else:
            assert status == 403 and scope in answer["message"], (path, answer)
        status, _, answer = await call(users["admin"])
        assert status == 200, (path, answer)


async def test_catalog_lists_public_cached_repositories_to_anyone_but_no_private_one(fake_upstream, make_wharf):
    fake = await fake_upstream()
    fake.require_bearer(users={"alice": "alice-pw"}, private={"org/secret"})
    public, secret = make_image("catalog-public", (100,)), make_image("catalog-secret", (100,))
    fake.add_image("team/public", public, tag="v1")
    fake.add_image("org/secret", secret, tag="v1")
    wharf = await make_wharf(fake.url, auth=None)
    host = wharf.upstream_name(fake.url)
    await pull(wharf, f"{host}/team/public", "v1", public)
    alice = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}
    await pull(wharf, f"{host}/org/secret", "v1", secret, headers=alice)  # learned with alice's own credential
    await push_image(wharf.url, "local/app", make_image("catalog-local", (50,)), tag="v1")
    await wharf.app[keys.CACHE_INDEX].flush()

    async def catalog(headers: dict, of=wharf, **params) -> tuple[list[str], str | None]:
        resp = await of.client.get("/v2/_catalog", headers=headers, params=params)
        assert resp.status == 200, await resp.text()
        return (await resp.json())["repositories"], resp.headers.get("Link")

    names, _ = await catalog({})
    assert f"{host}/team/public" in names
    assert f"{host}/org/secret" not in names and "local/app" not in names  # local/app is private
    for headers in (alice, wharf.admin_headers):
        names, _ = await catalog(headers)
        assert f"{host}/org/secret" not in names and f"{host}/team/public" in names
    names, _ = await catalog(wharf.admin_headers)
    assert "local/app" in names
    assert names == sorted(names)
    first, link = await catalog(wharf.admin_headers, n="1")
    assert len(first) == 1 and link is not None
    assert parse_qs(urlsplit(link.split(">")[0].lstrip("<")).query)["last"] == [first[0]]
    rest, _ = await catalog(wharf.admin_headers, last=first[0])
    assert first + rest == names

    # a Wharf that serves upstream content to signed-in users only names none of it to anonymous callers
    closed = await make_wharf(fake.url, auth=None, access={"pull_through": "authenticated"},
                              storage={"root": str(wharf.app[keys.CONFIG].storage.root)})
    anonymous, _ = await catalog({}, of=closed)
    assert f"{host}/team/public" not in anonymous
    signed_in, _ = await catalog(wharf.admin_headers, of=closed)
    assert f"{host}/team/public" in signed_in
