"""What the cache may answer: private tags stay private, upstream answers that are not manifests
are refused, and remembered answers (hot set, replays) drop as soon as the truth changes."""

from __future__ import annotations

import asyncio
import base64

import pytest

from support.images import MANIFEST_ACCEPT, make_image, push_image
from support.accounts import add_org
from test_access import set_visibility
from test_replay import DOCKER_V2, REPLAYING as ALL_ON, RawConnection

USERS = {"alice": "alice-pw"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_a_private_tag_stays_private_when_its_digest_is_public(fake_upstream, make_wharf):
    fake = await fake_upstream()
    fake.require_bearer(users=USERS, private={"secret/internal-copy"})
    image = make_image("shared-digest", (500,))
    fake.add_image("org/open", image, tag="1.0")
    fake.add_image("secret/internal-copy", image, tag="v7")
    wharf = await make_wharf(fake.url, fast_paths=ALL_ON)
    prefix = wharf.upstream_name(fake.url)
    public = f"/v2/{prefix}/org/open/manifests/1.0"
    private = f"/v2/{prefix}/secret/internal-copy/manifests/v7"
    assert (await wharf.client.get(public, headers={"Accept": MANIFEST_ACCEPT})).status == 200
    for _ in range(2):
        resp = await wharf.client.get(private, headers={"Accept": MANIFEST_ACCEPT, **basic("alice", "alice-pw")})
        assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == image.digest
    for method in ("GET", "HEAD"):
        for accept in (MANIFEST_ACCEPT, DOCKER_V2, None):
            headers = {"Accept": accept} if accept else {}
            resp = await wharf.client.request(method, private, headers=headers)
            assert resp.status == 401, (method, accept)
            assert "Docker-Content-Digest" not in resp.headers
    connection = await RawConnection.open(wharf.url)  # nor on a keep-alive connection (replays)
    try:
        for _ in range(3):
            status, headers, _ = await connection.exchange("GET", private, accept=DOCKER_V2)
            assert status == 401 and "docker-content-digest" not in headers
    finally:
        await connection.close()
    # by digest the content is public: that answer is not a leak
    resp = await wharf.client.get(f"/v2/{prefix}/org/open/manifests/{image.digest}")
    assert resp.status == 200


@pytest.mark.parametrize("body, content_type", [
    (b'{"token":"evil"}', "application/json"),
    (b'{"token":"evil"}', "application/vnd.docker.distribution.manifest.v2+json"),
    (b'<html>login</html>', "text/html"),
    (b'[]', "application/json"),
    (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}',
     "application/vnd.oci.image.manifest.v1+json"),
    (b'{"schemaVersion": 2, "manifests": 5}', "application/vnd.oci.image.index.v1+json"),
])
async def test_upstream_answers_that_are_not_manifests_are_refused(fake_upstream, make_wharf, body, content_type):
    from proxy.app import BLOBS
    from proxy.oci.digest import Digest

    fake = await fake_upstream()
    digest = fake.add_manifest("org/app", body, content_type, tag="v1")
    wharf = await make_wharf(fake.url)
    prefix = wharf.upstream_name(fake.url)
    for reference in ("v1", digest):
        resp = await wharf.client.get(f"/v2/{prefix}/org/app/manifests/{reference}")
        assert resp.status == 502, reference
        assert (await resp.json())["errors"][0]["code"] == "UNAVAILABLE"
    assert wharf.app[BLOBS].size(Digest.parse(digest)) is None  # nothing was stored


async def _replayed(wharf, connection: RawConnection, path: str, accept: str) -> tuple[int, bytes, bool]:
    """(status, body, whether the answer was replayed, i.e. never reached the application)."""
    before = len(wharf.seen)
    status, _, body = await connection.exchange("GET", path, accept=accept)
    return status, body, len(wharf.seen) == before


async def test_remembered_answers_drop_when_a_namespace_becomes_local(fake_upstream, make_wharf):
    from proxy.http.keys import ADDRESSING

    fake = await fake_upstream()
    upstream_image, pushed = make_image("hub-team-app", (200,)), make_image("local-team-app", (200,))
    fake.add_image("team/app", upstream_image, tag="latest")
    wharf = await make_wharf(named_upstreams={"docker.io": fake.url}, default_upstream="docker.io",
                             fast_paths=ALL_ON)
    path = "/v2/team/app/manifests/latest"
    connection = await RawConnection.open(wharf.url)
    try:
        for accept in (DOCKER_V2, MANIFEST_ACCEPT):
            for _ in range(2):  # a miss, then a hit from memory that is remembered whole
                await connection.exchange("GET", path, accept=accept)
            status, body, replayed = await _replayed(wharf, connection, path, accept)
            assert status == 200 and body == upstream_image.manifest and replayed
        add_org(wharf.database, "team", {"admin": "owner"})  # an admin creates the organisation "team"
        await asyncio.sleep(0.3)  # every worker polls the accounts' revision
        assert "team" in wharf.app[ADDRESSING].local_namespaces
        for accept in (DOCKER_V2, MANIFEST_ACCEPT):  # the same connection, the same Accept
            status, _, replayed = await _replayed(wharf, connection, path, accept)
            assert status == 401 and not replayed  # a local name now, and nothing public there
        await push_image(wharf.url, "team/app", pushed, tag="latest")
        set_visibility(wharf.database, "team/app", "public")
        await asyncio.sleep(0.3)
        for accept in (DOCKER_V2, MANIFEST_ACCEPT):
            status, body, _ = await _replayed(wharf, connection, path, accept)
            assert status == 200 and body == pushed.manifest
    finally:
        await connection.close()


async def test_a_change_reaches_the_answers_other_workers_remember(fake_upstream, make_wharf, tmp_path):
    from proxy.http.keys import ADDRESSING, IDENTITY, REPLAYS

    fake = await fake_upstream()
    image = make_image("two-workers-remember", (200,))
    fake.add_image("team/app", image, tag="latest")
    common = {"storage": {"root": str(tmp_path / "store")}, "workers": 2, "fast_paths": ALL_ON,
              "named_upstreams": {"docker.io": fake.url}, "default_upstream": "docker.io"}
    first, second = await make_wharf(**common), await make_wharf(**common)
    # the second's start added its admin account: the first hears of it now, not mid-test (a new
    # database revision drops every remembered answer)
    await first.app[IDENTITY].poll()
    path = "/v2/team/app/manifests/latest"
    for _ in range(3):
        assert (await first.client.get(path, headers={"Accept": DOCKER_V2})).status == 200
    assert len(first.app[REPLAYS]) == 1
    second.app[ADDRESSING].local_namespaces.declare("team")
    for _ in range(50):
        if len(first.app[REPLAYS]) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(first.app[REPLAYS]) == 0, "the other worker kept its remembered answer"
