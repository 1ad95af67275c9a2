"""The packages pages at the HTTP level, with real pushes and real sign-ins: what each viewer is
shown, and what they are not (private packages are 404 on every page, in search and in counts, as
on the API); the forms that delete, restore and change visibility, and who gets them."""

from __future__ import annotations

import html as html_lib
import re
import uuid

import aiohttp
import pytest

from support.accounts import add_org, add_token, add_user, basic
from support.images import (MANIFEST_ACCEPT, OCI_MANIFEST, canonical_json, make_image, make_index, push_blob,
                            push_image, push_manifest, sha256_digest)
from support.web import WebClient, csrf_of

LABELS_KEY = "org.opencontainers.image.description"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
LABELS = {"org.opencontainers.image.source": "https://example.com/alice/app",
          "org.opencontainers.image.description": "The app that does the thing",
          "org.opencontainers.image.licenses": "Apache-2.0"}

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class Site:
    """alice, bob (owner of the org acme) and carol (member of acme), each with a token of every
    scope, and a browser per person (``anonymous`` signs in as nobody)."""

    def __init__(self, wharf) -> None:
        self.wharf = wharf
        db = wharf.database
        for name in ("alice", "bob", "carol"):
            add_user(db, name)
        add_org(db, "acme", {"bob": "owner", "carol": "member"})
        self.secrets = {name: add_token(db, name)[1] for name in ("alice", "bob", "carol")}
        self.clients: dict[str | None, WebClient] = {}

    async def as_(self, who: str | None) -> WebClient:
        if who not in self.clients:
            client = self.clients[who] = WebClient(self.wharf.url)
            if who is not None:
                await client.signin(who, self.secrets[who])
        return self.clients[who]

    async def push(self, who: str, repository: str, image, tag: str | None = "latest") -> None:
        await push_image(self.wharf.url, repository, image, tag, auth=(who, self.secrets[who]))

    async def api(self, method: str, path: str, who: str, **kwargs) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": basic(who, self.secrets[who])}
            async with session.request(method, self.wharf.url + path, headers=headers, **kwargs) as resp:
                await resp.read()
                return resp

    async def pull_status(self, repository: str, reference: str, who: str | None = None) -> int:
        headers = {"Accept": MANIFEST_ACCEPT, **({"Authorization": basic(who, self.secrets[who])} if who else {})}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.wharf.url}/v2/{repository}/manifests/{reference}", headers=headers) as resp:
                return resp.status

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


@pytest.fixture
async def site(make_wharf):
    site = Site(await make_wharf(auth=None))
    yield site
    await site.close()


async def make_public(site: Site, who: str, repository: str) -> None:
    owner, _, name = repository.partition("/")
    kind = "orgs" if owner == "acme" else "users"
    resp = await site.api("PATCH", f"/api/{kind}/{owner}/packages/container/{name.replace('/', '%2F')}", who,
                          json={"visibility": "public"})
    assert resp.status == 200


def listed(page: str, repository: str) -> bool:
    """Whether the packages page lists ``repository`` (a link to its page)."""
    return f'href="/packages/{repository}"' in page


def text_of(page: str) -> str:
    """The page's words, without tags (what a reader sees)."""
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


# /packages -------------------------------------------------------------------------------------------
async def test_anonymous_visitors_see_public_packages_only(site):
    public, private = f"alice/{unique('pub')}", f"alice/{unique('secret')}"
    await site.push("alice", public, make_image(public))
    await site.push("alice", private, make_image(private))
    await make_public(site, "alice", public)
    anonymous = await site.as_(None)
    status, page, _ = await anonymous.get("/packages")
    assert status == 200
    assert public in page and private not in page
    assert "1 package," in text_of(page)  # the count leaves it out too
    for query in (f"?q={private}", "?visibility=private", "?owner=alice", f"?q={private.split('/')[1][:6]}"):
        status, page, _ = await anonymous.get("/packages" + query)
        assert status == 200 and not listed(page, private), query
    # alice sees both; bob, signed in, only the public one
    status, page, _ = await (await site.as_("alice")).get("/packages")
    assert public in page and private in page and "2 packages," in text_of(page)
    status, page, _ = await (await site.as_("bob")).get(f"/packages?q={private}")
    assert not listed(page, private) and "0 packages" in text_of(page)


async def test_search_filters_and_order(site):
    first, second = f"alice/{unique('alpha')}", f"acme/{unique('beta')}"
    await site.push("alice", first, make_image(first, labels={**LABELS, LABELS_KEY: "Finds needles"}))
    await site.push("bob", second, make_image(second))
    alice, bob = await site.as_("alice"), await site.as_("bob")
    await make_public(site, "bob", second)
    # most recently updated first
    status, page, _ = await alice.get("/packages")
    assert page.index(second) < page.index(first)
    # by name, by description (any case), by owner, by visibility
    assert first in (await alice.get("/packages?q=ALPHA"))[1]
    assert not listed((await alice.get("/packages?q=alpha"))[1], second)
    found = (await alice.get("/packages?q=needles"))[1]
    assert listed(found, first) and not listed(found, second)
    by_owner = (await alice.get("/packages?owner=acme"))[1]
    assert listed(by_owner, second) and not listed(by_owner, first)
    private = (await alice.get("/packages?visibility=private"))[1]
    assert listed(private, first) and not listed(private, second)
    # the owner filter offers the owners of what the viewer may read
    assert '<option value="alice"' not in (await bob.get("/packages"))[1]
    assert '<option value="alice"' in (await alice.get("/packages"))[1]
    status, page, _ = await alice.get("/packages?visibility=secret")
    assert status == 422 and "visibility must be one of" in page


async def test_search_pages_the_results(site):
    names = [f"alice/{unique('many')}" for _ in range(32)]
    for name in names:
        await site.push("alice", name, make_image(name, (16,)))
    alice = await site.as_("alice")
    status, first, _ = await alice.get("/packages?q=many")
    assert "32 packages" in text_of(first) and "Page 1 of 2" in first
    status, second, _ = await alice.get("/packages?q=many&page=2")
    shown = lambda page: {n for n in names if f">{n}</a>" in page}  # noqa: E731
    assert len(shown(first)) == 30 and len(shown(second)) == 2 and not shown(first) & shown(second)
    assert (await alice.get("/packages?page=0"))[0] == 422


# a package -------------------------------------------------------------------------------------------
async def test_a_package_page_shows_what_the_package_is_and_how_to_pull_it(site):
    repository = f"alice/{unique('app')}/web"
    image = make_image(repository, labels=LABELS)
    index = make_index(repository + "-multi")
    await site.push("alice", repository, image, "v1")
    await site.push("alice", repository, index, "latest")
    assert await site.pull_status(repository, "v1", "alice") == 200
    alice = await site.as_("alice")
    status, page, _ = await alice.get(f"/packages/{repository}")
    assert status == 200
    words = text_of(page)
    host = site.wharf.url.split("://", 1)[1]
    assert "Apache-2.0" in words
    assert '<a href="https://example.com/alice/app"' in page
    assert f"docker pull {host}/{repository}:latest" in words
    assert f"docker pull {host}/{repository}@{index.digest}" in words
    assert f'data-copy="docker pull {host}/{repository}:latest"' in page
    assert image.digest in page and index.digest in page
    assert "linux/amd64" in words and "linux/arm64" in words
    assert "private" in words
    size = len(image.manifest) + sum(len(b) for b in image.blobs.values())
    assert f"{size / 1000:.1f} kB" in words
    # the tags table: v1 and latest with their digests; one download of v1
    tags = page[page.index('id="tags"'):page.index("</table>", page.index('id="tags"'))]
    assert re.search(rf"<strong>v1</strong>.*?{image.digest}.*?>1</td>", tags, re.S)
    assert "Downloads</dt><dd>1</dd>" in page
    # the same page is the API's html_url
    encoded = repository.split("/", 1)[1].replace("/", "%2F")
    resp = await site.api("GET", f"/api/users/alice/packages/container/{encoded}", "alice")
    assert (await resp.json())["html_url"] == f"{site.wharf.url}/packages/{repository}"


async def test_referrers_such_as_signatures_are_listed(site):
    repository = f"alice/{unique('signed')}"
    image = make_image(repository, (10,), oci=True)
    await site.push("alice", repository, image, "v1")
    empty = b"{}"
    signature = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIGNATURE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(empty), "size": 2},
        "layers": [], "subject": {"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest)}})
    auth = ("alice", site.secrets["alice"])
    async with aiohttp.ClientSession() as session:
        await push_blob(session, site.wharf.url, repository, empty, auth)
        signed = await push_manifest(session, site.wharf.url, repository, sha256_digest(signature), signature,
                                     OCI_MANIFEST, auth)
    alice = await site.as_("alice")
    status, page, _ = await alice.get(f"/packages/{repository}")
    referrers = page[page.index('id="referrers"'):]
    assert SIGNATURE in referrers and signed in referrers
    versions = (await alice.get(f"/packages/{repository}/versions"))[1]
    version_id = re.search(rf'/versions/(\d+)"><code class="mono">{image.digest}', versions).group(1)
    status, page, _ = await alice.get(f"/packages/{repository}/versions/{version_id}")
    assert status == 200 and signed in page and "cosign" in page


async def test_a_private_package_is_not_found_on_every_page(site):
    repository = f"alice/{unique('hidden')}"
    await site.push("alice", repository, make_image(repository), "v1")
    alice = await site.as_("alice")
    versions = (await alice.get(f"/packages/{repository}/versions"))[1]
    version_id = re.search(r"/versions/(\d+)\"", versions).group(1)
    for who in (None, "bob"):
        client = await site.as_(who)
        for path in (f"/packages/{repository}", f"/packages/{repository}/versions",
                     f"/packages/{repository}/versions/{version_id}"):
            status, page, resp = await client.get(path)
            assert status == 404, (who, path)
            # the same page as for a name nobody ever pushed
            _, nothing, _ = await client.get(path.replace(repository, "alice/never-pushed"))
            assert resp.content_type == "text/html"
            assert text_of(page).replace(repository.split("/")[1], "never-pushed") == text_of(nothing)
        # the API says the same
        status, _, _ = await client.get(f"/api/users/alice/packages/container/{repository.split('/')[1]}")
        assert status in (401, 404)
    for path in (f"/packages/{repository}", f"/packages/{repository}/versions/{version_id}"):
        assert (await alice.get(path))[0] == 200


async def test_the_source_is_a_link_only_when_it_is_a_web_address(site):
    repository = f"alice/{unique('src')}"
    await site.push("alice", repository, make_image(repository, labels={
        "org.opencontainers.image.source": "javascript:alert(document.cookie)"}))
    page = (await (await site.as_("alice")).get(f"/packages/{repository}"))[1]
    assert 'href="javascript:' not in page and "javascript:alert(document.cookie)" in page


# the forms ---------------------------------------------------------------------------------------------
async def test_delete_and_restore_a_version_from_the_versions_page(site):
    repository = f"acme/{unique('svc')}"
    image, other = make_image(repository), make_image(repository + "-b")
    await site.push("carol", repository, image, "v1")
    await site.push("carol", repository, other, "v2")
    bob = await site.as_("bob")  # owner of acme: admin of its packages
    path = f"/packages/{repository}/versions"
    status, page, _ = await bob.get(path)
    assert status == 200 and image.digest in page and other.digest in page
    version_id = re.search(rf'/versions/(\d+)"><code class="mono">{image.digest}', page).group(1)
    action = f"{path}/{version_id}/delete"
    assert f'action="{action}"' in page
    status, _, resp = await bob.form(path, action)
    assert status == 303 and resp.headers["Location"] == f"{path}?done=version_deleted"
    assert await site.pull_status(repository, "v1", "bob") == 404
    status, page, _ = await bob.get(f"{path}?done=version_deleted")
    assert "The version was deleted" in page
    deleted = page[page.index('id="deleted-versions"'):]
    assert image.digest in deleted and f'action="{path}/{version_id}/restore"' in deleted
    status, _, resp = await bob.form(path, f"{path}/{version_id}/restore")
    assert status == 303 and resp.headers["Location"] == f"{path}?done=version_restored"
    assert await site.pull_status(repository, "v1", "bob") == 200
    page = (await bob.get(path))[1]
    assert image.digest not in page[page.index("Deleted versions"):]


async def test_readers_get_no_forms_and_their_posts_change_nothing(site):
    repository = f"alice/{unique('shared')}"
    image = make_image(repository)
    await site.push("alice", repository, image, "v1")
    await make_public(site, "alice", repository)
    alice, bob = await site.as_("alice"), await site.as_("bob")
    path = f"/packages/{repository}/versions"
    page = (await alice.get(path))[1]
    version_id = re.search(r'/versions/(\d+)"', page).group(1)
    assert "Deleted versions" in page and "/delete" in page
    assert "Visibility" in (await alice.get(f"/packages/{repository}"))[1]
    status, page, _ = await bob.get(path)
    assert status == 200 and image.digest in page
    assert "/delete" not in page and "Deleted versions" not in page
    assert 'id="visibility-form"' not in (await bob.get(f"/packages/{repository}"))[1]
    # bob's own session and token, a well-formed POST: the service refuses it
    status, page, _ = await bob.post_as_session(f"{path}/{version_id}/delete")
    assert status == 403 and "admin role" in page
    status, page, _ = await bob.post_as_session(f"/packages/{repository}/visibility", {"visibility": "private"})
    assert status == 403
    assert await site.pull_status(repository, "v1") == 200  # still public, still there


async def test_change_visibility_from_the_package_page(site):
    repository = f"acme/{unique('vis')}"
    await site.push("bob", repository, make_image(repository), "v1")
    bob, anonymous = await site.as_("bob"), await site.as_(None)
    assert (await anonymous.get(f"/packages/{repository}"))[0] == 404
    status, _, resp = await bob.form(f"/packages/{repository}", f"/packages/{repository}/visibility",
                                     {"visibility": "public"})
    assert status == 303 and resp.headers["Location"] == f"/packages/{repository}?done=visibility_changed"
    status, page, _ = await anonymous.get(f"/packages/{repository}")
    assert status == 200 and 'class="badge public"' in page
    assert repository in (await anonymous.get("/packages"))[1]
    assert await site.pull_status(repository, "v1") == 200
    status, _, resp = await bob.form(f"/packages/{repository}", f"/packages/{repository}/visibility",
                                     {"visibility": "private"})
    assert resp.headers["Location"].endswith("done=visibility_not_public")
    assert "no longer public" in (await bob.get(resp.headers["Location"]))[1]
    assert (await anonymous.get(f"/packages/{repository}"))[0] == 404
    status, page, _ = await bob.form(f"/packages/{repository}", f"/packages/{repository}/visibility",
                                     {"visibility": "everyone"})
    assert status == 422


async def test_a_much_downloaded_public_version_cannot_be_deleted(make_wharf):
    site = Site(await make_wharf(auth=None, access={"delete_download_limit": 1}))
    try:
        repository = f"alice/{unique('popular')}"
        await site.push("alice", repository, make_image(repository), "v1")
        await make_public(site, "alice", repository)
        for _ in range(2):
            assert await site.pull_status(repository, "v1") == 200
        alice = await site.as_("alice")
        path = f"/packages/{repository}/versions"
        version_id = re.search(r'/versions/(\d+)"', (await alice.get(path))[1]).group(1)
        status, page, _ = await alice.form(path, f"{path}/{version_id}/delete")
        assert status == 403 and "cannot be deleted" in page
        assert await site.pull_status(repository, "v1") == 200
    finally:
        await site.close()


async def test_csrf_of_helper_reads_the_named_form():
    page = '<form action="/a"><input name="csrf" value="one"></form><form action="/b"><input name="csrf" value="two">'
    assert csrf_of(page, "/b") == "two" and csrf_of(page) == "one"


async def test_roles_on_a_private_package_show_it_to_their_holders(site):
    repository = f"alice/{unique('granted')}"
    await site.push("alice", repository, make_image(repository), "v1")
    name = repository.split("/", 1)[1]
    base = f"/api/users/alice/packages/container/{name}/roles"
    assert (await site.api("PUT", f"{base}/users/bob", "alice", json={"role": "read"})).status == 200
    assert (await site.api("PUT", f"{base}/orgs/acme", "alice", json={"role": "read"})).status == 200
    for who in ("bob", "carol"):  # bob by his own role, carol as a member of acme
        client = await site.as_(who)
        page = (await client.get("/packages?visibility=private"))[1]
        assert listed(page, repository), who
        assert (await client.get(f"/packages/{repository}"))[0] == 200
        assert "/delete" not in (await client.get(f"/packages/{repository}/versions"))[1]  # read is not admin
    assert (await site.api("DELETE", f"{base}/orgs/acme", "alice")).status == 204
    page = (await (await site.as_("carol")).get("/packages"))[1]
    assert not listed(page, repository)
