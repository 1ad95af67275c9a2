"""The package service: packages made by pushes, their metadata and versions, delete and restore,
visibility, download counts and gc's retention. Real pushes to a running Wharf; what a client then
pulls is what is asserted."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest
from sqlalchemy import select

from support.images import (MANIFEST_ACCEPT, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Blob, canonical_json,
                            make_image, make_index, push_blob, push_image, push_manifest, sha256_digest)

from proxy.app import BLOBS, META, UPLOADS
from proxy.errors import Denied, Unauthorized
from proxy.http.keys import CONFIG, INVALIDATION, PACKAGES
from proxy.oci.digest import Digest
from proxy.registry.access import SCOPES, Principal, Role
from proxy.registry.gc import collect
from proxy.registry.packages import (InvalidRequest, PackageConflict, PackageNotFound, PackageRefused, Packages)
from proxy.storage.database import Package, PackageRole, User
from support.accounts import add_org, add_token, add_user

ALL = frozenset(SCOPES)


class RecordingAudit:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []

    def record(self, event: str, **details) -> None:
        self.records.append((event, details))

    def events(self) -> list[str]:
        return [event for event, _ in self.records]


class Site:
    """A Wharf with users alice, bob, carol and the org acme (owner bob, member carol), each with a
    token of every scope; pushes go through the registry (its guard records them here)."""

    def __init__(self, wharf, packages: Packages, audit: RecordingAudit) -> None:
        self.wharf, self.packages, self.audit = wharf, packages, audit
        db = wharf.database
        for name in ("alice", "bob", "carol"):
            add_user(db, name)
        add_org(db, "acme", {"bob": "owner", "carol": "member"})
        self.secrets = {name: add_token(db, name)[1] for name in ("alice", "bob", "carol")}
        with db.session() as s:
            ids = dict(s.execute(select(User.name, User.id)).all())
        self.ids = ids
        self.alice = Principal("alice", ids["alice"], False, ALL)
        self.bob = Principal("bob", ids["bob"], False, ALL, orgs={"acme": "owner"})
        self.carol = Principal("carol", ids["carol"], False, ALL, orgs={"acme": "member"})
        self.anonymous = Principal()

    @property
    def db(self):
        return self.wharf.database

    def auth(self, principal: Principal) -> tuple[str, str]:
        return principal.user, self.secrets[principal.user]

    async def push(self, principal: Principal, repository: str, image, tag: str | None = "latest") -> None:
        await push_image(self.wharf.url, repository, image, tag, auth=self.auth(principal))

    async def pull(self, repository: str, reference: str) -> tuple[int, bytes]:
        """As the server admin (who may read everything): what exists is served, what was deleted not."""
        resp = await self.wharf.client.get(f"/v2/{repository}/manifests/{reference}",
                                           headers={"Accept": MANIFEST_ACCEPT})
        return resp.status, await resp.read()

    async def versions(self, principal, owner_kind, owner, name, state="active"):
        page = await self.packages.list_versions(principal, owner_kind, owner, name, state)
        return list(page.items)

    def revision(self) -> int:
        return self.db.revision()


@pytest.fixture
async def site(make_wharf) -> Site:
    """The app's own package service (the one its registry guard calls), with a recording audit log."""
    wharf = await make_wharf(gc={"interval_seconds": 0}, access={"delete_download_limit": 3})
    audit = RecordingAudit()
    packages = wharf.app[PACKAGES]
    packages._audit = audit  # the app's audit log is another module's; this one records what it is told
    yield Site(wharf, packages, audit)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# pushes make packages ---------------------------------------------------------------------------------
async def test_first_push_creates_a_private_package_with_the_pusher_as_admin(site):
    name = unique("app")
    before = site.revision()
    await site.push(site.alice, f"alice/{name}/web", make_image(name))
    assert site.revision() == before + 1
    facts = site.packages.facts(f"alice/{name}/web")
    assert facts.visibility == "private" and facts.namespace == "alice"
    assert facts.user_roles == {site.ids["alice"]: Role.ADMIN}
    package = await site.packages.get_package(site.alice, "users", "alice", f"{name}/web")
    assert (package.namespace, package.name, package.owner_type, package.version_count) == \
        ("alice", f"{name}/web", "User", 1)
    # a second push into the live package changes no access fact: no revision bump
    await site.push(site.alice, f"alice/{name}/web", make_image(name + "-2"), "v2")
    assert site.revision() == before + 1
    assert (await site.packages.get_package(site.alice, "users", "alice", f"{name}/web")).version_count == 2
    assert site.audit.events().count("push") == 2
    assert site.packages.facts("alice/never-pushed") is None


async def test_org_member_push_gives_the_org_package_and_the_owner_admin(site):
    name = unique("svc")
    await site.push(site.carol, f"acme/{name}", make_image(name))
    facts = site.packages.facts(f"acme/{name}")
    assert facts.user_roles == {site.ids["carol"]: Role.ADMIN}
    package = await site.packages.get_package(site.bob, "orgs", "acme", name)  # org owner: admin of all
    assert package.owner_type == "Organization"
    with pytest.raises(PackageNotFound):  # an org's package is not at users/
        await site.packages.get_package(site.bob, "users", "acme", name)


async def test_metadata_from_labels_is_cut_to_length_and_says_so(site):
    name = unique("meta")
    labels = {"org.opencontainers.image.source": "https://example.com/alice/meta",
              "org.opencontainers.image.description": "d" * 600,
              "org.opencontainers.image.licenses": "MIT"}
    await site.push(site.alice, f"alice/{name}", make_image(name, labels=labels))
    package = await site.packages.get_package(site.alice, "users", "alice", name)
    assert package.source == "https://example.com/alice/meta"
    assert package.description == "d" * 512
    assert package.licenses == "MIT"
    assert package.truncated == ("description",)
    # a later push without labels keeps the metadata; one with labels replaces it
    await site.push(site.alice, f"alice/{name}", make_image(name + "-plain"), "plain")
    assert (await site.packages.get_package(site.alice, "users", "alice", name)).licenses == "MIT"
    await site.push(site.alice, f"alice/{name}", make_image(name + "-new", labels={
        "org.opencontainers.image.licenses": "L" * 300}), "new")
    package = await site.packages.get_package(site.alice, "users", "alice", name)
    assert (package.licenses, package.description, package.truncated) == ("L" * 256, None, ("licenses",))


async def test_an_index_gives_its_annotations_and_its_platforms(site):
    name = unique("multi")
    index = make_index(name, (700,), oci=True)
    doc = json.loads(index.manifest)
    doc["annotations"] = {"org.opencontainers.image.description": "My multi-arch image"}
    body = canonical_json(doc)
    await site.push(site.alice, f"alice/{name}", index, tag=None)  # the children and a first index
    async with aiohttp.ClientSession() as session:
        digest = await push_manifest(session, site.wharf.url, f"alice/{name}", "multi", body, OCI_INDEX,
                                     auth=site.auth(site.alice))
    package = await site.packages.get_package(site.alice, "users", "alice", name)
    assert package.description == "My multi-arch image"
    versions = {v.digest: v for v in await site.versions(site.alice, "users", "alice", name)}
    top = versions[digest]
    assert top.platforms == ("linux/amd64", "linux/arm64")
    assert top.tags == ("multi",)
    every = {d: b for image in index.images for d, b in image.blobs.items()}
    assert top.size == len(body) + sum(len(i.manifest) for i in index.images) + sum(len(b) for b in every.values())
    child = versions[index.images[1].digest]
    assert child.platforms == ("linux/arm64",) and child.tags == ()
    assert child.size == len(index.images[1].manifest) + sum(len(b) for b in index.images[1].blobs.values())


async def test_a_config_that_is_not_json_gives_no_metadata_and_the_push_succeeds(site):
    name = unique("broken")
    repository = f"alice/{name}"
    config = Blob(b"{not json", sha256_digest(b"{not json"), OCI_CONFIG)
    layer = Blob(b"layer-bytes", sha256_digest(b"layer-bytes"), "application/vnd.oci.image.layer.v1.tar")
    manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
                               "layers": [layer.descriptor()]})
    async with aiohttp.ClientSession() as session:
        for blob in (config, layer):
            await push_blob(session, site.wharf.url, repository, blob.data, auth=site.auth(site.alice))
        digest = await push_manifest(session, site.wharf.url, repository, "v1", manifest, OCI_MANIFEST,
                                     auth=site.auth(site.alice))
    await site.packages.record_push(site.alice, repository, sha256_digest(b"x"), OCI_MANIFEST, b"\xff garbage", [])
    package = await site.packages.get_package(site.alice, "users", "alice", name)
    assert (package.description, package.source, package.licenses) == (None, None, None)
    (version,) = [v for v in await site.versions(site.alice, "users", "alice", name) if v.digest == digest]
    assert version.platforms == () and version.size == len(manifest) + config.size + layer.size
    assert (await site.pull(repository, "v1")) == (200, manifest)


# delete and restore ----------------------------------------------------------------------------------
async def test_a_deleted_version_stops_serving_at_once_and_restores_with_its_tags(site):
    name = unique("del")
    repository = f"alice/{name}"
    image = make_image(name)
    await site.push(site.alice, repository, image, "v1")
    await site.push(site.alice, repository, image, "stable")
    other = make_image(name + "-other")
    await site.push(site.alice, repository, other, "other")
    for _ in range(2):  # remembered answers (hot and replayed ones) are warm
        assert await site.pull(repository, "v1") == (200, image.manifest)
        assert await site.pull(repository, image.digest) == (200, image.manifest)
    (version,) = [v for v in await site.versions(site.alice, "users", "alice", name) if v.digest == image.digest]
    assert sorted(version.tags) == ["stable", "v1"]
    before = site.revision()
    dropped: list[tuple[str, str]] = []  # what the caches of remembered answers are told
    site.wharf.app[INVALIDATION].subscribe(lambda scope, ref: dropped.append((scope, ref)), lambda: None)
    await site.packages.delete_version(site.alice, "users", "alice", name, version.id)
    assert site.revision() == before + 1
    assert sorted(dropped) == sorted((f"/{repository}", ref) for ref in ("v1", "stable", image.digest))
    for reference in ("v1", "stable", image.digest):
        assert (await site.pull(repository, reference))[0] == 404
    assert await site.pull(repository, "other") == (200, other.manifest)
    (deleted,) = await site.versions(site.alice, "users", "alice", name, "deleted")
    assert deleted.id == version.id and sorted(deleted.tags) == ["stable", "v1"] and deleted.deleted_at
    assert [v.digest for v in await site.versions(site.alice, "users", "alice", name)] == [other.digest]
    with pytest.raises(PackageNotFound):  # already deleted
        await site.packages.delete_version(site.alice, "users", "alice", name, version.id)

    # meanwhile another image takes "stable": the restore leaves it there
    taker = make_image(name + "-taker")
    await site.push(site.alice, repository, taker, "stable")
    restored = await site.packages.restore_version(site.alice, "users", "alice", name, version.id)
    assert restored.deleted_at is None and restored.tags == ("v1",)
    assert await site.pull(repository, "v1") == (200, image.manifest)
    assert await site.pull(repository, image.digest) == (200, image.manifest)
    assert await site.pull(repository, "stable") == (200, taker.manifest)
    for digest, data in image.blobs.items():
        assert await (await site.wharf.client.get(f"/v2/{repository}/blobs/{digest}")).read() == data
    assert {"delete", "restore"} <= set(site.audit.events())
    with pytest.raises(PackageNotFound):
        await site.packages.restore_version(site.alice, "users", "alice", name, version.id)


async def test_an_oci_delete_by_digest_makes_the_version_deleted(site):
    name = unique("ocidel")
    repository = f"alice/{name}"
    image = make_image(name)
    await site.push(site.alice, repository, image, "v1")
    resp = await site.wharf.client.delete(f"/v2/{repository}/manifests/{image.digest}")
    assert resp.status == 202  # the registry guard tells the package service
    (deleted,) = await site.versions(site.alice, "users", "alice", name, "deleted")
    assert deleted.digest == image.digest
    await site.packages.restore_version(site.alice, "users", "alice", name, deleted.id)
    assert await site.pull(repository, image.digest) == (200, image.manifest)
    assert await site.pull(repository, "v1") == (200, image.manifest)  # the tag it held when pushed


async def test_deleting_a_package_and_reusing_its_name(site):
    name = unique("pkg")
    repository = f"alice/{name}"
    first = make_image(name)
    await site.push(site.alice, repository, first, "v1")
    await site.packages.delete_package(site.alice, "users", "alice", name)
    assert site.packages.facts(repository) is None
    assert (await site.pull(repository, "v1"))[0] == 404
    with pytest.raises(PackageNotFound):
        await site.packages.get_package(site.alice, "users", "alice", name)
    # restore brings it back with its versions
    package = await site.packages.restore_package(site.alice, "users", "alice", name)
    assert package.version_count == 1 and package.deleted_at is None
    assert await site.pull(repository, "v1") == (200, first.manifest)
    with pytest.raises(PackageNotFound):  # a live package is not restored
        await site.packages.restore_package(site.alice, "users", "alice", name)

    await site.packages.delete_package(site.alice, "users", "alice", name)
    second = make_image(name + "-again")
    await site.push(site.alice, repository, second, "v2")  # the name is reused: a new package
    live = await site.packages.get_package(site.alice, "users", "alice", name)
    assert live.id != package.id and live.version_count == 1
    with pytest.raises(PackageConflict):
        await site.packages.restore_package(site.alice, "users", "alice", name)
    assert (await site.pull(repository, "v1"))[0] == 404
    # the old package's content is no longer held for a restore
    assert first.digest not in site.packages.held_digests()


async def test_a_much_downloaded_public_version_cannot_be_deleted(site):
    name = unique("popular")
    repository = f"alice/{name}"
    image = make_image(name)
    await site.push(site.alice, repository, image, "v1")
    (version,) = await site.versions(site.alice, "users", "alice", name)
    for _ in range(4):
        await site.packages.count_download(repository, image.digest)
    assert (await site.packages.get_version(site.alice, "users", "alice", name, version.id)).download_count == 4
    await site.packages.flush_downloads()
    with site.db.session() as s:
        assert s.scalar(select(Package.id).where(Package.repository == repository)) == \
            (await site.packages.get_package(site.alice, "users", "alice", name)).id
    assert (await site.packages.get_version(site.alice, "users", "alice", name, version.id)).download_count == 4
    # private: the count does not matter
    await site.packages.set_visibility(site.alice, "users", "alice", name, "public")
    with pytest.raises(PackageRefused, match="more than 3 downloads"):
        await site.packages.delete_version(site.alice, "users", "alice", name, version.id)
    with pytest.raises(PackageRefused):
        await site.packages.delete_package(site.alice, "users", "alice", name)
    assert await site.pull(repository, "v1") == (200, image.manifest)
    await site.packages.set_visibility(site.alice, "users", "alice", name, "private")
    await site.packages.delete_version(site.alice, "users", "alice", name, version.id)


async def test_download_counts_are_written_in_the_background_and_at_close(site):
    name = unique("counted")
    repository = f"alice/{name}"
    image = make_image(name)
    await site.push(site.alice, repository, image, "v1")
    for _ in range(3):
        await site.packages.count_download(repository, image.digest)
    (version,) = await site.versions(site.alice, "users", "alice", name)
    fresh = Packages(site.db, site.wharf.app[META], site.wharf.app[BLOBS], site.wharf.app[INVALIDATION], None,
                     site.wharf.app[CONFIG].access)  # another worker: sees only what was written
    for _ in range(200):
        if (await fresh.get_version(site.alice, "users", "alice", name, version.id)).download_count == 3:
            break
        await asyncio.sleep(0.05)
    assert (await fresh.get_version(site.alice, "users", "alice", name, version.id)).download_count == 3
    await site.packages.count_download(repository, image.digest)
    await site.packages.close()
    assert (await fresh.get_version(site.alice, "users", "alice", name, version.id)).download_count == 4


# visibility and who sees what ---------------------------------------------------------------------------
async def test_visibility_changes_and_what_others_see(site):
    name = unique("vis")
    await site.push(site.alice, f"alice/{name}", make_image(name))
    listing = lambda who: site.packages.list_packages(who, "users", "alice")  # noqa: E731
    assert [p.name for p in (await listing(site.alice)).items] == [name]
    assert (await listing(site.bob)).items == ()
    assert (await listing(site.anonymous)).items == ()
    for who in (site.bob, site.anonymous):
        with pytest.raises(PackageNotFound):
            await site.packages.get_package(who, "users", "alice", name)
    with pytest.raises(Unauthorized):  # a write needs a signed-in caller
        await site.packages.delete_package(site.anonymous, "users", "alice", name)
    with pytest.raises(PackageNotFound):  # another user is not told the private package exists
        await site.packages.delete_package(site.bob, "users", "alice", name)

    before = site.revision()
    change = await site.packages.set_visibility(site.alice, "users", "alice", name, "internal")
    assert change.package.visibility == "internal" and change.notice is None
    assert site.revision() == before + 1
    assert [p.name for p in (await listing(site.bob)).items] == [name]
    assert (await listing(site.anonymous)).items == ()
    with pytest.raises(Denied):  # bob sees it, but is no admin
        await site.packages.delete_package(site.bob, "users", "alice", name)
    with pytest.raises(Denied):
        await site.packages.set_visibility(site.bob, "users", "alice", name, "public")

    await site.packages.set_visibility(site.alice, "users", "alice", name, "public")
    assert [p.name for p in (await listing(site.anonymous)).items] == [name]
    assert (await site.packages.get_package(site.anonymous, "users", "alice", name)).visibility == "public"
    change = await site.packages.set_visibility(site.alice, "users", "alice", name, "private")
    assert "copies pulled while it was public may exist" in change.notice
    assert (await listing(site.anonymous)).items == ()
    with pytest.raises(InvalidRequest):
        await site.packages.set_visibility(site.alice, "users", "alice", name, "secret")
    assert "visibility" in site.audit.events()


async def test_scopes_and_roles_bound_the_api(site):
    name = unique("scoped")
    await site.push(site.alice, f"alice/{name}", make_image(name))
    package = await site.packages.get_package(site.alice, "users", "alice", name)
    read_only = Principal("alice", 1, False, frozenset({"read:packages"}))
    no_read = Principal("alice", 1, False, frozenset({"delete:packages"}))
    with pytest.raises(Denied, match="delete:packages"):
        await site.packages.delete_package(read_only, "users", "alice", name)
    with pytest.raises(Denied, match="read:packages"):
        await site.packages.get_package(no_read, "users", "alice", name)
    with pytest.raises(Denied, match="read:packages"):  # the same answer for a name that does not exist
        await site.packages.get_package(no_read, "users", "alice", "nothing-here")
    # a reader granted on the package sees it but may not delete
    with site.db.session() as s:
        s.add(PackageRole(package_id=package.id, user_id=site.ids["bob"], role="read"))
    assert (await site.packages.get_package(site.bob, "users", "alice", name)).id == package.id
    with pytest.raises(Denied, match="admin role"):
        await site.packages.delete_package(site.bob, "users", "alice", name)
    with pytest.raises(PackageNotFound):
        await site.packages.list_packages(site.alice, "users", "nobody-at-all")
    with pytest.raises(Unauthorized):  # the caller's own packages need a caller
        await site.packages.list_packages(site.anonymous, None, None)
    own = await site.packages.list_packages(site.alice, None, None)
    assert name in [p.name for p in own.items]


async def test_paging_lists(site):
    names = sorted(unique(f"page{i}") for i in range(5))
    for name in names:
        await site.push(site.alice, f"alice/{name}", make_image(name, (64,)))
    first = await site.packages.list_packages(site.alice, "users", "alice", page=1, per_page=2)
    third = await site.packages.list_packages(site.alice, "users", "alice", page=3, per_page=2)
    assert first.total == 5 and [p.name for p in first.items] == names[:2]
    assert [p.name for p in third.items] == names[4:]


# gc keeps restorable content ----------------------------------------------------------------------------
async def test_gc_keeps_deleted_versions_until_their_retention_ends(site):
    name = unique("gc")
    repository = f"alice/{name}"
    image = make_image(name)
    await site.push(site.alice, repository, image, "v1")
    (version,) = await site.versions(site.alice, "users", "alice", name)
    await site.packages.delete_version(site.alice, "users", "alice", name, version.id)
    app = site.wharf.app

    async def gc(now: float):
        return await collect(app[BLOBS], app[META], app[UPLOADS], 0.0, held=site.packages.held_digests(now))

    report = await gc(time.time())
    stored = lambda d: app[BLOBS].size(Digest.parse(d)) is not None  # noqa: E731
    assert report.removed == 0 and all(stored(d) for d in (image.digest, *image.blobs))
    await site.packages.restore_version(site.alice, "users", "alice", name, version.id)
    assert await site.pull(repository, "v1") == (200, image.manifest)

    await site.packages.delete_version(site.alice, "users", "alice", name, version.id)
    report = await gc(time.time() + 31 * 86400)  # the 30 days have passed
    assert report.removed == 1 + len(image.blobs)
    assert not any(stored(d) for d in (image.digest, *image.blobs))
    with pytest.raises(PackageConflict):  # within the retention by the clock, but the content is gone
        await site.packages.restore_version(site.alice, "users", "alice", name, version.id)


async def test_the_background_gc_pass_keeps_what_may_be_restored(make_wharf):
    # a second of grace: the push below is never taken between its blobs and its manifest
    wharf = await make_wharf(gc={"interval_seconds": 0.1, "grace_seconds": 1})
    repository = f"admin/{unique('kept')}"
    image = make_image(repository)
    await push_image(wharf.url, repository, image, "v1")
    resp = await wharf.client.delete(f"/v2/{repository}/manifests/{image.digest}")
    assert resp.status == 202
    async with aiohttp.ClientSession() as session:  # a blob no manifest names: the next pass takes it
        stray = await push_blob(session, wharf.url, repository, b"stray bytes " * 100)
    blobs = wharf.app[BLOBS]
    for _ in range(200):
        if blobs.size(Digest.parse(stray)) is None:
            break
        await asyncio.sleep(0.05)
    assert blobs.size(Digest.parse(stray)) is None  # a pass ran after the delete ...
    assert all(blobs.size(Digest.parse(d)) is not None for d in (image.digest, *image.blobs))  # ... and kept these
    name = repository.split("/", 1)[1]
    packages = wharf.app[PACKAGES]
    admin = Principal("admin", None, True, ALL)
    (deleted,) = (await packages.list_versions(admin, "users", "admin", name, "deleted")).items
    await packages.restore_version(admin, "users", "admin", name, deleted.id)
    resp = await wharf.client.get(f"/v2/{repository}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == image.manifest
