"""The packages REST API under /api/: GitHub's paths, fields, paging and errors, with real tokens and
real pushes; what a client then pulls is checked too."""

from __future__ import annotations

import re
import uuid
from urllib.parse import quote

import aiohttp
import pytest
from sqlalchemy import select

from support.accounts import add_org, add_token, add_user, basic
from support.images import MANIFEST_ACCEPT, make_image, push_image

from proxy.http.openapi import document
from proxy.storage.database import Package, PackageRole, User

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Api:
    """alice, bob (owner of the org acme) and carol (member of acme), each with a token of every scope."""

    def __init__(self, wharf) -> None:
        self.wharf = wharf
        db = wharf.database
        for name in ("alice", "bob", "carol"):
            add_user(db, name)
        add_org(db, "acme", {"bob": "owner", "carol": "member"})
        self.secrets = {name: add_token(db, name)[1] for name in ("alice", "bob", "carol")}
        self.read_only = add_token(db, "alice", ("read:packages",))[1]

    def headers(self, who: str | None) -> dict[str, str]:
        return {"Authorization": basic(who, self.secrets[who])} if who else {}

    async def call(self, method: str, path: str, who: str | None = None, **kwargs) -> aiohttp.ClientResponse:
        """A request with exactly ``who``'s credentials (none for anonymous), on a fresh session."""
        headers = {**self.headers(who), **kwargs.pop("headers", {})}
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.wharf.url + path, headers=headers, **kwargs) as resp:
                await resp.read()
                return resp

    async def json(self, method: str, path: str, who: str | None = None, status: int = 200, **kwargs):
        resp = await self.call(method, path, who, **kwargs)
        assert resp.status == status, (resp.status, resp._body)
        return None if status == 204 else await resp.json()

    async def push(self, who: str, repository: str, image, tag: str | None = "latest") -> None:
        await push_image(self.wharf.url, repository, image, tag, auth=(who, self.secrets[who]))

    async def pull(self, repository: str, reference: str, who: str | None = "alice") -> int:
        resp = await self.call("GET", f"/v2/{repository}/manifests/{reference}", who,
                               headers={"Accept": MANIFEST_ACCEPT})
        return resp.status


@pytest.fixture
async def api(make_wharf) -> Api:
    return Api(await make_wharf(auth=None, access={"delete_download_limit": 2}))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def assert_github_error(body: dict) -> None:
    assert isinstance(body["message"], str) and body["message"]
    assert body["documentation_url"].startswith("https://")


async def test_a_package_as_github_shows_it(api):
    name = unique("app") + "/web"
    labels = {"org.opencontainers.image.source": "https://example.com/alice/app",
              "org.opencontainers.image.description": "x" * 513, "org.opencontainers.image.licenses": "MIT"}
    await api.push("alice", f"alice/{name}", make_image(name, labels=labels), "v1")
    listed = await api.json("GET", "/api/users/alice/packages?package_type=container", "alice")
    assert [p["name"] for p in listed] == [name]
    package = await api.json("GET", f"/api/users/alice/packages/container/{quote(name, safe='')}", "alice")
    assert package == listed[0]
    assert package["package_type"] == "container" and package["visibility"] == "private"
    assert package["owner"] == {"login": "alice", "type": "User"}
    assert package["version_count"] == 1
    assert package["url"] == f"{api.wharf.url}/api/users/alice/packages/container/{quote(name, safe='')}"
    assert package["html_url"] == f"{api.wharf.url}/packages/alice/{name}"
    assert TIME.match(package["created_at"]) and TIME.match(package["updated_at"])
    assert (package["source"], package["licenses"]) == ("https://example.com/alice/app", "MIT")
    assert package["description"] == "x" * 512 and package["truncated"] == ["description"]
    own = await api.json("GET", "/api/user/packages?package_type=container", "alice")
    assert own == listed
    also = await api.json("GET", f"/api/user/packages/container/{quote(name, safe='')}", "alice")
    assert also["id"] == package["id"]


async def test_versions_delete_and_restore_over_the_api(api):
    name = unique("svc")
    repository = f"acme/{name}"
    image, other = make_image(name), make_image(name + "-b")
    await api.push("carol", repository, image, "v1")
    await api.push("carol", repository, other, "v2")
    base = f"/api/orgs/acme/packages/container/{name}"
    versions = await api.json("GET", f"{base}/versions", "bob")
    assert [v["name"] for v in versions] == [other.digest, image.digest]  # newest first
    first = versions[1]
    assert first["tags"] == ["v1"] and first["metadata"] == {"package_type": "container",
                                                            "container": {"tags": ["v1"]}}
    assert first["platforms"] == ["linux/amd64"] and first["deleted_at"] is None
    assert first["size"] == len(image.manifest) + sum(len(b) for b in image.blobs.values())
    assert first["url"] == f"{api.wharf.url}{base}/versions/{first['id']}"
    assert await api.json("GET", f"{base}/versions/{first['id']}", "bob") == first

    await api.json("DELETE", f"{base}/versions/{first['id']}", "carol", status=204)  # carol pushed it: admin
    assert await api.pull(repository, "v1", "carol") == 404
    assert await api.pull(repository, image.digest, "carol") == 404
    deleted = await api.json("GET", f"{base}/versions?state=deleted", "bob")
    assert [v["id"] for v in deleted] == [first["id"]] and TIME.match(deleted[0]["deleted_at"])
    assert deleted[0]["tags"] == ["v1"]
    assert [v["id"] for v in await api.json("GET", f"{base}/versions", "bob")] == [versions[0]["id"]]
    body = await api.json("DELETE", f"{base}/versions/{first['id']}", "carol", status=404)
    assert_github_error(body)

    await api.json("POST", f"{base}/versions/{first['id']}/restore", "bob", status=204)  # org owner
    assert await api.pull(repository, "v1", "carol") == 200
    restored = await api.json("GET", f"{base}/versions/{first['id']}", "bob")
    assert restored["deleted_at"] is None and restored["tags"] == ["v1"]

    await api.json("DELETE", base, "bob", status=204)
    assert await api.pull(repository, "v2", "bob") == 404
    assert_github_error(await api.json("GET", base, "bob", status=404))
    await api.json("POST", f"{base}/restore", "bob", status=204)
    assert (await api.json("GET", base, "bob"))["version_count"] == 2
    assert await api.pull(repository, "v2", "bob") == 200
    # the name reused after a delete: the old package can no longer be restored
    await api.json("DELETE", base, "bob", status=204)
    await api.push("bob", repository, make_image(name + "-new"), "v3")
    assert_github_error(await api.json("POST", f"{base}/restore", "bob", status=409))


async def test_who_sees_what(api):
    name = unique("vis")
    base = f"/api/users/alice/packages/container/{name}"
    await api.push("alice", f"alice/{name}", make_image(name))
    listing = "/api/users/alice/packages?package_type=container"
    assert await api.json("GET", listing, None) == []
    assert await api.json("GET", listing, "bob") == []
    for who in (None, "bob"):  # a private package of someone else is not found
        assert_github_error(await api.json("GET", base, who, status=404))
        await api.json("GET", f"{base}/versions", who, status=404)
    resp = await api.call("DELETE", base, None)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Basic realm="wharf"'
    assert_github_error(await resp.json())
    await api.json("DELETE", base, "bob", status=404)
    resp = await api.call("GET", listing, headers={"Authorization": basic("alice", "wharf_pat_" + "0" * 40)})
    assert resp.status == 401 and "WWW-Authenticate" in resp.headers
    assert (await api.json("GET", "/api/user/packages?package_type=container", None, status=401))["message"]

    change = await api.json("PATCH", base, "alice", json={"visibility": "internal"})
    assert change["visibility"] == "internal" and change["notice"] is None
    assert [p["name"] for p in await api.json("GET", listing, "bob")] == [name]
    assert await api.json("GET", listing, None) == []
    assert "admin role" in (await api.json("PATCH", base, "bob", status=403, json={"visibility": "public"}))["message"]
    assert "admin role" in (await api.json("DELETE", base, "bob", status=403))["message"]

    await api.json("PATCH", base, "alice", json={"visibility": "public"})
    assert [p["name"] for p in await api.json("GET", listing, None)] == [name]
    assert (await api.json("GET", f"{base}/versions", None))[0]["name"]
    assert await api.pull(f"alice/{name}", "latest", None) == 200
    change = await api.json("PATCH", base, "alice", json={"visibility": "private"})
    assert "copies pulled while it was public may exist" in change["notice"]
    assert await api.json("GET", listing, None) == []
    assert await api.pull(f"alice/{name}", "latest", None) == 401  # stops at once

    read_only = {"Authorization": basic("alice", api.read_only)}
    body = await api.json("DELETE", base, None, status=403, headers=read_only)
    assert "delete:packages" in body["message"]
    assert (await api.json("GET", base, None, headers=read_only))["name"] == name


async def test_bearer_tokens_are_taken_too(api):
    name = unique("bearer")
    await api.push("alice", f"alice/{name}", make_image(name))
    headers = {"Authorization": f"Bearer {api.secrets['alice']}"}
    listed = await api.json("GET", "/api/users/alice/packages?package_type=container", None, headers=headers)
    assert [p["name"] for p in listed] == [name]


async def test_bad_input_gets_github_errors(api):
    name = unique("bad")
    base = f"/api/users/alice/packages/container/{name}"
    await api.push("alice", f"alice/{name}", make_image(name))
    for query in ("", "?package_type=npm", "?package_type=container&per_page=101",
                  "?package_type=container&page=0", "?package_type=container&page=x",
                  "?package_type=container&visibility=secret"):
        assert_github_error(await api.json("GET", f"/api/users/alice/packages{query}", "alice", status=422))
    await api.json("GET", f"{base}/versions?state=gone", "alice", status=422)
    for bad in ("0", "-1", "abc", str(2**70)):
        await api.json("GET", f"{base}/versions/{bad}", "alice", status=404)
    await api.json("GET", f"/api/users/alice/packages/npm/{name}", "alice", status=404)
    await api.json("GET", "/api/users/nobody-here/packages?package_type=container", "alice", status=404)
    await api.json("GET", "/api/orgs/alice/packages?package_type=container", "alice", status=404)
    await api.json("PATCH", base, "alice", status=400, data=b"{not json")
    await api.json("PATCH", base, "alice", status=400, json=["public"])
    await api.json("PATCH", base, "alice", status=422, json={})
    await api.json("PATCH", base, "alice", status=422, json={"visibility": "secret"})
    await api.json("PATCH", base, "alice", status=422, json={"visibility": None})


async def test_link_paging(api):
    names = sorted(unique(f"page{i}") for i in range(3))
    for name in names:
        await api.push("alice", f"alice/{name}", make_image(name, (64,)))
    path = "/api/users/alice/packages?package_type=container&per_page=1"
    seen = []
    resp = await api.call("GET", path, "alice")
    link = resp.headers["Link"]
    assert 'rel="next"' in link and 'rel="last"' in link and "page=3" in link
    while True:
        seen += [p["name"] for p in await resp.json()]
        links = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', resp.headers.get("Link", "")))
        if "next" not in links:
            break
        assert links["next"].startswith(api.wharf.url) and "package_type=container" in links["next"]
        resp = await api.call("GET", links["next"][len(api.wharf.url):], "alice")
    assert seen == names
    assert 'rel="prev"' in resp.headers["Link"] and 'rel="next"' not in resp.headers["Link"]
    resp = await api.call("GET", "/api/users/alice/packages?package_type=container", "alice")
    assert "Link" not in resp.headers  # one page


async def test_a_much_downloaded_public_version_stays(api):
    name = unique("popular")
    repository = f"alice/{name}"
    image = make_image(name)
    await api.push("alice", repository, image, "v1")
    base = f"/api/users/alice/packages/container/{name}"
    await api.json("PATCH", base, "alice", json={"visibility": "public"})
    for _ in range(3):
        assert await api.pull(repository, "v1", None) == 200
    (version,) = await api.json("GET", f"{base}/versions", "alice")
    assert version["download_count"] == 3
    body = await api.json("DELETE", f"{base}/versions/{version['id']}", "alice", status=403)
    assert "more than 2 downloads" in body["message"]
    await api.json("DELETE", base, "alice", status=403)
    assert await api.pull(repository, "v1", None) == 200


async def test_an_org_package_role_is_honoured(api):
    name = unique("granted")
    await api.push("bob", f"acme/{name}", make_image(name))
    base = f"/api/orgs/acme/packages/container/{name}"
    await api.json("GET", base, "alice", status=404)
    db = api.wharf.database
    with db.session() as s:
        package_id = s.scalar(select(Package.id).where(Package.repository == f"acme/{name}"))
        alice = s.scalar(select(User.id).where(User.name == "alice"))
        s.add(PackageRole(package_id=package_id, user_id=alice, role="admin"))
    assert (await api.json("GET", base, "alice"))["owner"] == {"login": "acme", "type": "Organization"}
    await api.json("PATCH", base, "alice", json={"visibility": "internal"})


async def test_the_openapi_document_names_every_api_route(api):
    doc = await api.json("GET", "/api/openapi.json")
    assert doc["openapi"].startswith("3.") and doc["servers"] == [{"url": api.wharf.url}]
    routes = set()
    for resource in api.wharf.app.router.resources():
        path = resource.canonical
        if path.startswith("/api/") and path != "/api/openapi.json":
            for route in resource:
                if route.method != "HEAD":
                    routes.add((path, route.method.lower()))
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes == documented
    assert doc == document(api.wharf.url)
