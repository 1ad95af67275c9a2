"""Who may do what with local packages, over the registry API: every role x visibility x action,
tokens and their scopes, revocation, sign-in throttling, catalog filtering, mounts, fast paths."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import jwt
import pytest
from sqlalchemy import select

from proxy.http.keys import REPLAYS
from proxy.storage.database import Org, Package, PackageRole, User, bump_revision
from support.accounts import add_org, add_token, add_user, basic, revoke
from support.images import MANIFEST_ACCEPT, make_image, push_image

READ_ONLY = ("read:packages",)
READ_WRITE = ("read:packages", "write:packages")
EVERYTHING = ("read:packages", "write:packages", "delete:packages")



def set_visibility(db, repository: str, visibility: str) -> None:
    with db.session() as session:
        package = session.scalar(select(Package).where(Package.repository == repository))
        package.visibility = visibility
        bump_revision(session)


def grant(db, repository: str, user: str, role: str) -> None:
    with db.session() as session:
        package = session.scalar(select(Package).where(Package.repository == repository))
        user_id = session.scalar(select(User.id).where(User.name == user))
        session.add(PackageRole(package_id=package.id, user_id=user_id, role=role))
        bump_revision(session)


def grant_org(db, repository: str, org: str, role: str) -> None:
    with db.session() as session:
        package = session.scalar(select(Package).where(Package.repository == repository))
        org_id = session.scalar(select(Org.id).where(Org.name == org))
        session.add(PackageRole(package_id=package.id, org_id=org_id, role=role))
        bump_revision(session)


async def wait_for(predicate, seconds: float = 3.0):
    """Poll ``predicate`` (async) until true; the revision is polled every 0.1 s."""
    deadline = time.monotonic() + seconds
    while True:
        if await predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


class Team:
    """Accounts around one package ``team/app`` owned by the organisation ``team``."""

    def __init__(self, wharf) -> None:
        self.wharf = wharf
        db = wharf.database
        for name in ("reader", "writer", "maintainer", "org_owner", "member", "other"):
            add_user(db, name)
        add_org(db, "team", {"org_owner": "owner", "member": "member"})
        self.headers = {"anonymous": {}}
        for name in ("reader", "writer", "maintainer", "org_owner", "member", "other"):
            self.headers[name] = {"Authorization": basic(name, add_token(db, name, EVERYTHING)[1])}


async def _team(make_wharf):
    wharf = await make_wharf(auth=None)
    team = Team(wharf)
    image = make_image("team-app", (300, 500))
    # the org owner creates the package by pushing it
    await push_image(wharf.url, "team/app", image, tag="v1", auth=_auth_pair(team.headers["org_owner"]))
    return wharf, team, image


def _auth_pair(header: dict[str, str]) -> tuple[str, str] | None:
    if not header:
        return None
    user, _, secret = base64.b64decode(header["Authorization"].split(" ", 1)[1]).decode().partition(":")
    return user, secret


# expected status of each action, per visibility and person (None: allowed)
ALLOWED, UNAUTH, DENIED = 200, 401, 403
EXPECTED = {
    #            pull/list by visibility private, internal, public       push     delete
    "anonymous": ({"private": UNAUTH, "internal": UNAUTH, "public": ALLOWED}, UNAUTH, UNAUTH),
    "other":     ({"private": DENIED, "internal": ALLOWED, "public": ALLOWED}, DENIED, DENIED),
    "member":    ({"private": DENIED, "internal": ALLOWED, "public": ALLOWED}, DENIED, DENIED),
    "reader":    ({"private": ALLOWED, "internal": ALLOWED, "public": ALLOWED}, DENIED, DENIED),
    "writer":    ({"private": ALLOWED, "internal": ALLOWED, "public": ALLOWED}, ALLOWED, DENIED),
    "maintainer": ({"private": ALLOWED, "internal": ALLOWED, "public": ALLOWED}, ALLOWED, ALLOWED),
    "org_owner": ({"private": ALLOWED, "internal": ALLOWED, "public": ALLOWED}, ALLOWED, ALLOWED),
}


@pytest.mark.parametrize("visibility", ["private", "internal", "public"])
async def test_every_role_and_visibility_over_the_registry_api(make_wharf, visibility):
    wharf, team, image = await _team(make_wharf)
    db = wharf.database
    grant(db, "team/app", "reader", "read")
    grant(db, "team/app", "writer", "write")
    grant(db, "team/app", "maintainer", "admin")
    set_visibility(db, "team/app", visibility)
    for person in EXPECTED:  # a tag each person then tries to delete
        await push_image(wharf.url, "team/app", image, tag=f"d-{person}", auth=_auth_pair(team.headers["org_owner"]))
    await asyncio.sleep(0.3)  # the revision poll
    layer = next(iter(image.layers)).digest
    async with aiohttp.ClientSession() as session:
        for person, (reads, push, delete) in EXPECTED.items():
            headers = team.headers[person]
            want = reads[visibility]
            checks = {
                "pull manifest": await session.get(f"{wharf.url}/v2/team/app/manifests/v1",
                                                   headers={**headers, "Accept": MANIFEST_ACCEPT}),
                "pull blob": await session.get(f"{wharf.url}/v2/team/app/blobs/{layer}", headers=headers),
                "list tags": await session.get(f"{wharf.url}/v2/team/app/tags/list", headers=headers),
            }
            for what, resp in checks.items():
                assert resp.status == want, (person, visibility, what, resp.status, await resp.text())
                if want == UNAUTH:
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")
            resp = await session.post(f"{wharf.url}/v2/team/app/blobs/uploads/", headers=headers)
            assert resp.status == (202 if push == ALLOWED else push), (person, visibility, "push")
            if push == UNAUTH:  # the challenge asks for what a push needs
                assert 'scope="repository:team/app:pull,push"' in resp.headers["WWW-Authenticate"]
            if push == DENIED:
                assert (await resp.json())["errors"][0]["code"] == "DENIED"
            tag = f"t-{person}"
            resp = await session.put(f"{wharf.url}/v2/team/app/manifests/{tag}", data=image.manifest,
                                     headers={**headers, "Content-Type": image.media_type})
            assert resp.status == (201 if push == ALLOWED else push), (person, visibility, "tag", await resp.text())
            resp = await session.delete(f"{wharf.url}/v2/team/app/manifests/d-{person}", headers=headers)
            assert resp.status == (202 if delete == ALLOWED else delete), (person, visibility, "delete")


async def test_a_read_only_token_cannot_push_and_the_error_names_the_scope(make_wharf):
    wharf = await make_wharf(auth=None)
    add_user(wharf.database, "alice")
    _, token = add_token(wharf.database, "alice", READ_ONLY)
    resp = await wharf.client.post("/v2/alice/app/blobs/uploads/", headers={"Authorization": basic("alice", token)})
    assert resp.status == 403
    error = (await resp.json())["errors"][0]
    assert error["code"] == "DENIED" and "write:packages" in error["message"]


async def test_a_user_pushes_in_their_namespace_only_and_the_package_starts_private(make_wharf):
    wharf = await make_wharf(auth=None)
    for name in ("alice", "bob"):
        add_user(wharf.database, name)
    _, alice = add_token(wharf.database, "alice", READ_WRITE)
    _, bob = add_token(wharf.database, "bob", READ_WRITE)
    image = make_image("alice-app", (200,))
    await push_image(wharf.url, "alice/app", image, tag="v1", auth=("alice", alice))
    resp = await wharf.client.post("/v2/alice/other/blobs/uploads/", headers={"Authorization": basic("bob", bob)})
    assert resp.status == 403 and "may not create packages in alice/" in await resp.text()
    # private: anonymous gets the challenge, bob is denied, alice reads it
    resp = await wharf.client.get("/v2/alice/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 401
    resp = await wharf.client.get("/v2/alice/app/manifests/v1",
                                  headers={"Accept": MANIFEST_ACCEPT, "Authorization": basic("bob", bob)})
    assert resp.status == 403
    resp = await wharf.client.get("/v2/alice/app/manifests/v1",
                                  headers={"Accept": MANIFEST_ACCEPT, "Authorization": basic("alice", alice)})
    assert resp.status == 200 and await resp.read() == image.manifest


async def test_wrong_or_revoked_or_expired_tokens_are_refused_at_once(make_wharf):
    wharf = await make_wharf(auth=None)
    add_user(wharf.database, "alice")
    token_id, token = add_token(wharf.database, "alice", EVERYTHING)
    image = make_image("revoke-me", (200,))
    await push_image(wharf.url, "alice/app", image, tag="v1", auth=("alice", token))
    auth = {"Authorization": basic("alice", token), "Accept": MANIFEST_ACCEPT}
    async with aiohttp.ClientSession() as session:  # one keep-alive connection
        resp = await session.get(f"{wharf.url}/v2/alice/app/manifests/v1", headers=auth)
        assert resp.status == 200
        wrong = {"Authorization": basic("alice", token[:-1] + ("x" if token[-1] != "x" else "y"))}
        resp = await session.get(f"{wharf.url}/v2/alice/app/manifests/v1", headers=wrong)
        assert resp.status == 401
        resp = await session.get(f"{wharf.url}/v2/alice/app/manifests/v1",
                                 headers={"Authorization": basic("bob", token)})
        assert resp.status == 401  # another user's name with alice's token
        revoke(wharf.database, token_id)

        async def refused() -> bool:
            return (await session.get(f"{wharf.url}/v2/alice/app/manifests/v1", headers=auth)).status == 401
        assert await wait_for(refused)
    _, short = add_token(wharf.database, "alice", EVERYTHING, expires_at=time.time() + 1.0)
    auth = {"Authorization": basic("alice", short), "Accept": MANIFEST_ACCEPT}
    resp = await wharf.client.get("/v2/alice/app/manifests/v1", headers=auth)
    assert resp.status == 200
    await asyncio.sleep(1.2)
    resp = await wharf.client.get("/v2/alice/app/manifests/v1", headers=auth)
    assert resp.status == 401


async def test_docker_token_flow_signs_the_granted_actions_and_stops_with_the_token(make_wharf):
    wharf = await make_wharf(auth=None)
    add_user(wharf.database, "alice")
    token_id, token = add_token(wharf.database, "alice", READ_WRITE)
    await push_image(wharf.url, "alice/app", make_image("flow", (200,)), tag="v1", auth=("alice", token))
    resp = await wharf.client.get("/v2/")
    assert resp.status == 401 and 'realm="' in resp.headers["WWW-Authenticate"]
    resp = await wharf.client.get("/token", params={"service": "wharf", "scope": "repository:alice/app:pull,push,delete"},
                                  headers={"Authorization": basic("alice", token)})
    assert resp.status == 200
    issued = (await resp.json())["token"]
    claims = jwt.decode(issued, options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert claims["access"] == [{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}]
    assert token not in issued
    bearer = {"Authorization": f"Bearer {issued}", "Accept": MANIFEST_ACCEPT}
    resp = await wharf.client.get("/v2/alice/app/manifests/v1", headers=bearer)
    assert resp.status == 200
    forged = jwt.encode({**claims, "sub": "admin"}, "not the key", algorithm="HS256")
    resp = await wharf.client.get("/v2/alice/app/manifests/v1",
                                  headers={"Authorization": f"Bearer {forged}", "Accept": MANIFEST_ACCEPT})
    assert resp.status == 401
    revoke(wharf.database, token_id)

    async def refused() -> bool:
        return (await wharf.client.get("/v2/alice/app/manifests/v1", headers=bearer)).status == 401
    assert await wait_for(refused)


async def test_repeated_failed_sign_ins_are_slowed_and_counted(make_wharf):
    wharf = await make_wharf(auth=None, access={"login_failures": 3, "login_window_seconds": 60})
    add_user(wharf.database, "alice")
    _, token = add_token(wharf.database, "alice", READ_ONLY)
    bad = {"Authorization": basic("alice", "wharf_pat_" + "0" * 40)}
    for _ in range(3):
        resp = await wharf.client.get("/token", params={"service": "wharf"}, headers=bad)
        assert resp.status == 401
    resp = await wharf.client.get("/token", params={"service": "wharf"}, headers=bad)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    # the right token from the same address is slowed too until the window passes
    resp = await wharf.client.get("/token", params={"service": "wharf"},
                                  headers={"Authorization": basic("alice", token)})
    assert resp.status == 429
    metrics = await (await wharf.client.get("/metrics")).text()
    assert 'wharf_login_failures_total{reason="bad token"} 3.0' in metrics
    assert "wharf_login_throttled_total 2.0" in metrics


async def test_catalog_and_tags_show_only_what_the_caller_may_read(make_wharf):
    wharf, team, image = await _team(make_wharf)
    await push_image(wharf.url, "team/public-app", image, tag="v1",
                     auth=_auth_pair(team.headers["org_owner"]))
    set_visibility(wharf.database, "team/public-app", "public")
    await asyncio.sleep(0.3)
    resp = await wharf.client.get("/v2/_catalog")
    assert (await resp.json())["repositories"] == ["team/public-app"]
    resp = await wharf.client.get("/v2/_catalog", headers=team.headers["org_owner"])
    assert (await resp.json())["repositories"] == ["team/app", "team/public-app"]
    resp = await wharf.client.get("/v2/_catalog?n=1", headers=team.headers["org_owner"])
    assert (await resp.json())["repositories"] == ["team/app"] and "last=team%2Fapp" in resp.headers["Link"]
    resp = await wharf.client.get("/v2/_catalog", headers=team.headers["other"])
    assert (await resp.json())["repositories"] == ["team/public-app"]
    resp = await wharf.client.get("/v2/team/app/tags/list")
    assert resp.status == 401


async def test_mounts_link_only_blobs_the_caller_may_read(make_wharf):
    wharf, team, image = await _team(make_wharf)
    add_user(wharf.database, "mallory")
    _, token = add_token(wharf.database, "mallory", READ_WRITE)
    mallory = {"Authorization": basic("mallory", token)}
    layer = next(iter(image.layers)).digest
    for query in (f"mount={layer}&from=team/app", f"mount={layer}"):
        resp = await wharf.client.post(f"/v2/mallory/loot/blobs/uploads/?{query}", headers=mallory)
        assert resp.status == 202, query  # no mount: an upload session instead
        resp = await wharf.client.get(f"/v2/mallory/loot/blobs/{layer}", headers=mallory)
        assert resp.status == 404, query
    # a reader of team/app may mount from it, with and without from
    grant(wharf.database, "team/app", "mallory", "read")
    await asyncio.sleep(0.3)
    resp = await wharf.client.post(f"/v2/mallory/loot/blobs/uploads/?mount={layer}", headers=mallory)
    assert resp.status == 201
    resp = await wharf.client.get(f"/v2/mallory/loot/blobs/{layer}", headers=mallory)
    assert resp.status == 200


async def test_group_roles_reach_the_organisations_members(make_wharf):
    wharf, team, image = await _team(make_wharf)
    member = {**team.headers["member"], "Accept": MANIFEST_ACCEPT}
    resp = await wharf.client.get("/v2/team/app/manifests/v1", headers=member)
    assert resp.status == 403
    grant_org(wharf.database, "team/app", "team", "read")

    async def readable() -> bool:
        return (await wharf.client.get("/v2/team/app/manifests/v1", headers=member)).status == 200
    assert await wait_for(readable)
    resp = await wharf.client.post("/v2/team/app/blobs/uploads/", headers=member)
    assert resp.status == 403


@pytest.mark.parametrize("connection", ["keep-alive", "new"])
async def test_replayed_answers_of_a_public_package_stop_when_it_turns_private(make_wharf, connection):
    from test_replay import REPLAYING
    wharf = await make_wharf(auth=None, fast_paths=REPLAYING)
    add_user(wharf.database, "alice")
    _, token = add_token(wharf.database, "alice", READ_WRITE)
    await push_image(wharf.url, "alice/app", make_image("replayed", (200,)), tag="v1", auth=("alice", token))
    set_visibility(wharf.database, "alice/app", "public")
    await asyncio.sleep(0.3)
    url = f"{wharf.url}/v2/alice/app/manifests/v1"
    headers = {"Accept": MANIFEST_ACCEPT, "Authorization": "Bearer wharf.anonymous"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=connection == "new")) as session:
        for _ in range(3):
            resp = await session.get(url, headers=headers)
            assert resp.status == 200
        set_visibility(wharf.database, "alice/app", "private")

        async def refused() -> bool:
            return (await session.get(url, headers=headers)).status == 401
        assert await wait_for(refused, 1.0)


async def test_wharf_tokens_never_reach_an_upstream_and_upstream_credentials_grant_nothing_local(
        make_wharf, fake_upstream):
    fake = await fake_upstream()
    fake.require_bearer(users={"hubuser": "hub-pw"}, private=set())
    public = make_image("public-upstream", (300,))
    fake.add_image("library/alpine", public, tag="3")
    wharf = await make_wharf(named_upstreams={"docker.io": fake.url}, auth=None)
    add_user(wharf.database, "alice")
    _, token = add_token(wharf.database, "alice", READ_WRITE)
    await push_image(wharf.url, "alice/app", make_image("alice-private", (200,)), tag="v1", auth=("alice", token))
    # signed in with a Wharf token (Basic, and the signed token of /token): public upstream content flows
    resp = await wharf.client.get("/token", params={"service": "wharf", "scope": "repository:docker.io/alpine:pull"},
                                  headers={"Authorization": basic("alice", token)})
    signed = (await resp.json())["token"]
    for header in (basic("alice", token), f"Bearer {signed}"):
        resp = await wharf.client.get("/v2/docker.io/alpine/manifests/3",
                                      headers={"Authorization": header, "Accept": MANIFEST_ACCEPT})
        assert resp.status == 200 and await resp.read() == public.manifest
    sent = [r.headers.get("Authorization", "") for r in fake.requests]
    assert sent and not any(token in h or signed in h or "wharf_pat_" in h for h in sent)
    assert not any("alice" in base64.b64decode(h[6:]).decode() for h in sent if h.startswith("Basic"))
    # an upstream credential is no Wharf account: the private package stays closed to it
    resp = await wharf.client.get("/v2/alice/app/manifests/v1",
                                  headers={"Authorization": basic("hubuser", "hub-pw"), "Accept": MANIFEST_ACCEPT})
    assert resp.status == 401


async def test_pull_through_can_require_a_signed_in_user(make_wharf, fake_upstream):
    fake = await fake_upstream()
    image = make_image("members-only", (300,))
    fake.add_image("library/alpine", image, tag="3")
    wharf = await make_wharf(named_upstreams={"docker.io": fake.url}, auth=None,
                             access={"pull_through": "authenticated"})
    add_user(wharf.database, "alice")
    _, token = add_token(wharf.database, "alice", READ_ONLY)
    path = "/v2/docker.io/alpine/manifests/3"
    for _ in range(2):  # the second would be a hit from memory
        resp = await wharf.client.get(path, headers={"Accept": MANIFEST_ACCEPT,
                                                     "Authorization": basic("alice", token)})
        assert resp.status == 200
    for headers in ({}, {"Authorization": "Bearer wharf.anonymous"}):
        resp = await wharf.client.get(path, headers={"Accept": MANIFEST_ACCEPT, **headers})
        assert resp.status == 401 and "signed-in" in await resp.text()
    digest = next(iter(image.layers)).digest
    resp = await wharf.client.get(f"/v2/docker.io/alpine/blobs/{digest}")
    assert resp.status == 401


@pytest.mark.parametrize("connection", ["keep-alive", "new"])
async def test_replayed_answers_of_a_private_package_go_only_to_its_readers_while_they_stand(
        make_wharf, connection):
    from test_replay import REPLAYING
    wharf = await make_wharf(auth=None, fast_paths=REPLAYING)
    for name in ("alice", "bob"):
        add_user(wharf.database, name)
    alice_id, alice = add_token(wharf.database, "alice", READ_WRITE)
    _, bob = add_token(wharf.database, "bob", READ_WRITE)
    image = make_image("private-replayed", (200,))
    await push_image(wharf.url, "alice/app", image, tag="v1", auth=("alice", alice))
    url = f"{wharf.url}/v2/alice/app/manifests/v1"
    mine = {"Accept": MANIFEST_ACCEPT, "Authorization": basic("alice", alice)}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=connection == "new")) as session:
        for _ in range(3):
            resp = await session.get(url, headers=mine)
            assert resp.status == 200 and await resp.read() == image.manifest
        replayed = [e for e in wharf.app[REPLAYS]._entries.values() if e.readers is not None]
        assert replayed, "the reader's answer is remembered for replay"
        for headers in ({"Authorization": basic("bob", bob)}, {"Authorization": "Bearer wharf.anonymous"}, {}):
            resp = await session.get(url, headers={"Accept": MANIFEST_ACCEPT, **headers})
            assert resp.status in (401, 403), headers
        revoke(wharf.database, alice_id)

        async def refused() -> bool:
            return (await session.get(url, headers=mine)).status == 401
        assert await wait_for(refused, 1.0)


async def test_sign_ins_are_audited_without_the_token(make_wharf):
    import json as _json

    from proxy.http.keys import AUDIT
    wharf = await make_wharf(auth=None)
    add_user(wharf.database, "alice")
    _, token = add_token(wharf.database, "alice", READ_ONLY)
    for secret in (token, "wharf_pat_" + "1" * 42):
        await wharf.client.get("/token", params={"service": "wharf", "scope": "repository:alice/app:pull"},
                               headers={"Authorization": basic("alice", secret)})
    lines = wharf.app[AUDIT].path.read_text().splitlines()
    records = [_json.loads(line) for line in lines]
    logins = [r for r in records if r["action"].startswith("login")]
    assert [(r["action"], r["actor"]) for r in logins] == [("login", "alice"), ("login.failed", "alice")]
    assert logins[0]["remote"] == "127.0.0.1" and logins[0]["access"] == ["alice/app:pull"]
    assert token not in "\n".join(lines) and "wharf_pat_" not in "\n".join(lines)
