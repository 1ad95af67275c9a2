"""Offline serving (``offline: true``): a store filled online is served under its original names by
a Wharf that never contacts upstream; whatever is missing says offline mode; ``/readyz`` says so.

Content gets into the store the way a sync does: pulled through an online Wharf from the real
registry, then adopted as a mirrored image. The offline Wharf's upstream is a counting fake
registry that holds nothing: every test ends by checking it saw no request at all.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

import aiohttp
import pytest

from support.images import (MANIFEST_ACCEPT, OCI_MANIFEST, Image, ImageIndex, canonical_json, make_image,
                            make_index, push_blob, push_image, push_manifest, sha256_digest)

from proxy.http import keys
from proxy.mirror.records import MirroredImage
from proxy.upstream.client import UpstreamOffline

UPSTREAM = "registry.test"
SIGNATURE = "application/vnd.example.signature"
RULE = f"(offline: true: Wharf does not contact {UPSTREAM})"


@dataclass
class Stored:
    """What the online Wharf left in the store."""

    root: str
    repo: str
    image: Image             # tags v1 (mirrored) and v2 (only in the stored tag list)
    newer: Image             # tag v3, mirrored after the tag list was stored
    referrer: bytes          # a signature-like artifact whose subject is ``image``
    referrer_digest: str
    multi_repo: str
    index: ImageIndex        # only its linux/amd64 child was mirrored
    private_repo: str
    private: Image           # pulled with a client's own upstream credential


def _referrer(subject: Image, config: bytes, layer: bytes) -> bytes:
    return canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIGNATURE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.example.sig.v1", "digest": sha256_digest(layer),
                    "size": len(layer)}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.manifest)}})


async def _pull(wharf, name: str, image: Image, tag: str | None = None, headers: dict | None = None) -> None:
    """Pull ``image`` through ``wharf`` by prefix: manifest (by tag, and by digest) and every blob."""
    for reference in ([tag] if tag else []) + [image.digest]:
        resp = await wharf.client.get(f"/v2/{name}/manifests/{reference}",
                                      headers={"Accept": MANIFEST_ACCEPT, **(headers or {})})
        assert resp.status == 200, await resp.text()
        assert await resp.read() == image.manifest
    for digest, data in image.blobs.items():
        resp = await wharf.client.get(f"/v2/{name}/blobs/{digest}", headers=headers or {})
        assert resp.status == 200 and await resp.read() == data


def _mirrored(repo: str, image: Image, tags: dict[str, str], extra_manifests: dict[str, str] | None = None,
              extra_blobs: dict[str, int] | None = None, **more) -> MirroredImage:
    return MirroredImage(name=f"{UPSTREAM}/{repo}", upstream=UPSTREAM, repo=repo, tags=tags,
                         manifests={image.digest: image.media_type, **(extra_manifests or {})},
                         blobs={d: len(b) for d, b in image.blobs.items()} | (extra_blobs or {}), **more)


async def _fill_store(make_wharf, registry_upstream: str, repo_name: str, root) -> Stored:
    """Pull and adopt, through an online Wharf on ``root``, then close it."""
    image, newer = make_image("offline-img", (3000, 5000)), make_image("offline-newer", (2000,))
    other_tag = make_image("offline-v2", (1500,))
    index = make_index("offline-multi", (2500,), oci=True)
    private = make_image("offline-private", (1200,))
    multi_repo, private_repo = f"{repo_name}-multi", f"{repo_name}-private"
    await push_image(registry_upstream, repo_name, image, tag="v1")
    await push_image(registry_upstream, repo_name, other_tag, tag="v2")
    await push_image(registry_upstream, multi_repo, index, tag="v1")
    await push_image(registry_upstream, private_repo, private, tag="v1")
    config, layer = b"{}", b"signature-bytes"
    referrer = _referrer(image, config, layer)
    async with aiohttp.ClientSession() as session:
        for blob in (config, layer):
            await push_blob(session, registry_upstream, repo_name, blob)
        referrer_digest = await push_manifest(session, registry_upstream, repo_name, sha256_digest(referrer),
                                              referrer, OCI_MANIFEST)

    # upstream's confirmations last a second: past it, an online Wharf would revalidate every tag
    online = await make_wharf(named_upstreams={UPSTREAM: registry_upstream}, storage={"root": str(root)},
                              upstream_options={"tag_ttl": 1})
    name = f"{UPSTREAM}/{repo_name}"
    await _pull(online, name, image, "v1")
    resp = await online.client.get(f"/v2/{name}/tags/list")  # upstream's list is kept: v1, v2
    assert sorted((await resp.json())["tags"]) == ["v1", "v2"]
    await push_image(registry_upstream, repo_name, newer, tag="v3")
    await _pull(online, name, newer, "v3")
    resp = await online.client.get(f"/v2/{name}/manifests/{referrer_digest}", headers={"Accept": OCI_MANIFEST})
    assert await resp.read() == referrer
    for blob in (config, layer):
        assert (await online.client.get(f"/v2/{name}/blobs/{sha256_digest(blob)}")).status == 200
    amd64 = index.image_for("amd64")
    resp = await online.client.get(f"/v2/{UPSTREAM}/{multi_repo}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert await resp.read() == index.manifest
    await _pull(online, f"{UPSTREAM}/{multi_repo}", amd64)
    # a client's own upstream credential: what it fetches is private to it
    token = (await (await online.client.get(
        "/token", params={"scope": f"repository:{UPSTREAM}/{private_repo}:pull"},
        headers={"Authorization": "Basic " + base64.b64encode(b"someone:their-password").decode()})).json())["token"]
    await _pull(online, f"{UPSTREAM}/{private_repo}", private, "v1", headers={"Authorization": f"Bearer {token}"})

    records = online.app[keys.MIRROR_RECORDS]
    descriptor = {"mediaType": OCI_MANIFEST, "digest": referrer_digest, "size": len(referrer),
                  "artifactType": SIGNATURE}
    records.adopt(_mirrored(repo_name, image, {"v1": image.digest}, {referrer_digest: OCI_MANIFEST},
                            {sha256_digest(config): len(config), sha256_digest(layer): len(layer)},
                            referrers={image.digest: [descriptor]}), "testlist")
    records.adopt(_mirrored(repo_name, newer, {"v3": newer.digest}), "testlist")
    arm64 = index.image_for("arm64")
    records.adopt(_mirrored(multi_repo, amd64, {"v1": index.digest}, {index.digest: index.media_type},
                            unmirrored={arm64.digest: f"linux/arm64 of {index.digest} was not mirrored"}),
                  "testlist")
    await online.client.close()
    return Stored(str(root), repo_name, image, newer, referrer, referrer_digest, multi_repo, index,
                  private_repo, private)


@pytest.fixture
async def stored(make_wharf, registry_upstream, repo_name, tmp_path) -> Stored:
    return await _fill_store(make_wharf, registry_upstream, repo_name, tmp_path / "store")


@pytest.fixture
async def nowhere(fake_upstream):
    """The offline upstream's configured address: a registry that counts requests and holds nothing."""
    return await fake_upstream()


async def _offline(make_wharf, stored: Stored, nowhere, **overrides):
    overrides.setdefault("offline", True)
    return await make_wharf(named_upstreams={UPSTREAM: nowhere.url}, storage={"root": stored.root},
                            upstream_options={"tag_ttl": 1}, **overrides)


async def _error(resp) -> tuple[int, str, str]:
    body = await resp.json()
    (error,) = body["errors"]
    return resp.status, error["code"], error["message"]


async def test_offline_serves_mirrored_content_under_every_name_and_never_contacts_upstream(
        make_wharf, stored, nowhere):
    wharf = await _offline(make_wharf, stored, nowhere, default_upstream=UPSTREAM)
    image = stored.image
    await asyncio.sleep(1.1)  # past tag_ttl: online, this tag would be revalidated upstream (served whatever its age)
    forms = [(f"/v2/{UPSTREAM}/{stored.repo}", {}),           # path prefix
             (f"/v2/{stored.repo}", {"ns": UPSTREAM}),        # containerd's ?ns=
             (f"/v2/{stored.repo}", {})]                      # the default upstream
    for base, query in forms:
        for reference in ("v1", image.digest):
            resp = await wharf.client.get(f"{base}/manifests/{reference}", params=query,
                                          headers={"Accept": MANIFEST_ACCEPT})
            assert resp.status == 200, await resp.text()
            assert await resp.read() == image.manifest
            assert resp.headers["Docker-Content-Digest"] == image.digest
            assert resp.headers["Content-Type"] == image.media_type
            head = await wharf.client.head(f"{base}/manifests/{reference}", params=query,
                                           headers={"Accept": MANIFEST_ACCEPT})
            assert head.status == 200 and head.headers["Docker-Content-Digest"] == image.digest
            assert int(head.headers["Content-Length"]) == len(image.manifest)
        for digest, data in image.blobs.items():
            resp = await wharf.client.get(f"{base}/blobs/{digest}", params=query)
            assert resp.status == 200 and await resp.read() == data
            head = await wharf.client.head(f"{base}/blobs/{digest}", params=query)
            assert head.status == 200 and int(head.headers["Content-Length"]) == len(data)
    layer = image.layers[1]
    resp = await wharf.client.get(f"/v2/{UPSTREAM}/{stored.repo}/blobs/{layer.digest}",
                                  headers={"Range": "bytes=100-199"})
    assert resp.status == 206 and await resp.read() == layer.data[100:200]
    assert resp.headers["Content-Range"] == f"bytes 100-199/{layer.size}"
    resp = await wharf.client.get(f"/v2/{UPSTREAM}/{stored.repo}/blobs/{layer.digest}",
                                  headers={"Range": f"bytes={layer.size + 10}-"})
    assert resp.status == 416
    assert nowhere.requests == []


async def test_a_platform_subset_serves_its_index_and_platform_and_names_the_left_out_child(
        make_wharf, stored, nowhere):
    wharf = await _offline(make_wharf, stored, nowhere)
    name = f"{UPSTREAM}/{stored.multi_repo}"
    index, amd64, arm64 = stored.index, stored.index.image_for("amd64"), stored.index.image_for("arm64")
    resp = await wharf.client.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == index.manifest  # byte-exact: upstream's digest
    assert resp.headers["Docker-Content-Digest"] == index.digest
    resp = await wharf.client.get(f"/v2/{name}/manifests/{amd64.digest}", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == amd64.manifest
    resp = await wharf.client.head(f"/v2/{name}/manifests/{arm64.digest}", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 404
    status, code, message = await _error(await wharf.client.get(f"/v2/{name}/manifests/{arm64.digest}",
                                                                headers={"Accept": MANIFEST_ACCEPT}))
    assert (status, code) == (404, "MANIFEST_UNKNOWN")
    assert message == (f"{name}@{arm64.digest} was not mirrored: linux/arm64 of {index.digest} was not "
                       f"mirrored {RULE}")
    status, code, message = await _error(await wharf.client.get(f"/v2/{name}/blobs/{arm64.layers[0].digest}"))
    assert (status, code) == (404, "BLOB_UNKNOWN") and "offline" in message
    assert nowhere.requests == []


async def test_every_refusal_names_offline_mode(make_wharf, stored, nowhere):
    wharf = await _offline(make_wharf, stored, nowhere)
    name = f"{UPSTREAM}/{stored.repo}"
    missing_digest = sha256_digest(b"never stored")
    cases = [
        (f"/v2/{name}/manifests/v9", 404, "MANIFEST_UNKNOWN", f"{name}:v9 is not in this offline mirror {RULE}"),
        (f"/v2/{name}/manifests/{missing_digest}", 404, "MANIFEST_UNKNOWN",
         f"{name}@{missing_digest} is not in this offline mirror {RULE}"),
        (f"/v2/{name}/blobs/{missing_digest}", 404, "BLOB_UNKNOWN",
         f"{name}@{missing_digest} is not in this offline mirror {RULE}"),
        (f"/v2/{UPSTREAM}/never/seen/tags/list", 404, "NAME_UNKNOWN",
         f"repository {UPSTREAM}/never/seen is not in this offline mirror {RULE}"),
    ]
    for path, status, code, message in cases:
        assert await _error(await wharf.client.get(path, headers={"Accept": MANIFEST_ACCEPT})) == (status, code, message)
        assert (await wharf.client.head(path, headers={"Accept": MANIFEST_ACCEPT})).status == status
    # a client that accepts none of the stored type cannot have another form fetched
    status, code, message = await _error(await wharf.client.get(
        f"/v2/{name}/manifests/v1", headers={"Accept": "application/vnd.oci.image.index.v1+json"}))
    assert (status, code) == (404, "MANIFEST_UNKNOWN") and message.endswith(RULE)
    # content pushed to a local repository is not the upstream's: missing under its names
    pushed = make_image("offline-local-push", (600,))
    await push_image(wharf.url, "local/pushed", pushed, tag="v1")
    for path, code in ((f"/v2/{name}/manifests/{pushed.digest}", "MANIFEST_UNKNOWN"),
                       (f"/v2/{name}/blobs/{pushed.layers[0].digest}", "BLOB_UNKNOWN")):
        where = path.split("/")[-1]
        assert await _error(await wharf.client.get(path, headers={"Accept": MANIFEST_ACCEPT})) == (
            404, code, f"{name}@{where} is not in this offline mirror {RULE}")
    # pushes under an upstream's names stay refused
    resp = await wharf.client.post(f"/v2/{name}/blobs/uploads/")
    status, code, message = await _error(resp)
    assert (status, code) == (403, "DENIED") and "only mirrors" in message
    assert nowhere.requests == []


async def test_content_fetched_with_a_clients_credential_is_not_served_offline(make_wharf, stored, nowhere):
    wharf = await _offline(make_wharf, stored, nowhere)
    name = f"{UPSTREAM}/{stored.private_repo}"
    token = (await (await wharf.client.get(
        "/token", params={"scope": f"repository:{name}:pull"},
        headers={"Authorization": "Basic " + base64.b64encode(b"someone:their-password").decode()})).json())["token"]
    for headers in ({}, {"Authorization": f"Bearer {token}"}):  # not even to the client who fetched it
        for reference in ("v1", stored.private.digest):
            status, code, message = await _error(await wharf.client.get(
                f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT, **headers}))
            assert (status, code) == (404, "MANIFEST_UNKNOWN")
            assert "client's own upstream credential, which cannot be confirmed while offline" in message
            assert message.endswith(RULE)
        status, code, message = await _error(await wharf.client.get(
            f"/v2/{name}/blobs/{stored.private.layers[0].digest}", headers=headers))
        assert (status, code) == (404, "BLOB_UNKNOWN") and "cannot be confirmed while offline" in message
    assert nowhere.requests == []


async def test_tag_lists_merge_mirrored_tags_with_the_stored_list_and_page(make_wharf, stored, nowhere):
    wharf = await _offline(make_wharf, stored, nowhere)
    base = f"/v2/{UPSTREAM}/{stored.repo}/tags/list"
    resp = await wharf.client.get(base)
    assert resp.status == 200
    assert await resp.json() == {"name": stored.repo, "tags": ["v1", "v2", "v3"]}
    resp = await wharf.client.get(base, params={"n": "2"})
    assert (await resp.json())["tags"] == ["v1", "v2"]
    assert resp.headers["Link"] == f'</v2/{UPSTREAM}/{stored.repo}/tags/list?n=2&last=v2>; rel="next"'
    resp = await wharf.client.get(base, params={"n": "2", "last": "v2"})
    assert (await resp.json())["tags"] == ["v3"] and "Link" not in resp.headers
    resp = await wharf.client.get(base, params={"last": "v1"})
    assert (await resp.json())["tags"] == ["v2", "v3"]
    resp = await wharf.client.get(f"/v2/{stored.repo}/tags/list", params={"ns": UPSTREAM})
    assert (await resp.json())["tags"] == ["v1", "v2", "v3"]
    # the mirrored tags of the sparse index too (no tag list was stored there)
    resp = await wharf.client.get(f"/v2/{UPSTREAM}/{stored.multi_repo}/tags/list")
    assert (await resp.json())["tags"] == ["v1"]
    assert nowhere.requests == []


async def test_referrers_come_from_what_mirroring_recorded(make_wharf, stored, nowhere):
    wharf = await _offline(make_wharf, stored, nowhere)
    base = f"/v2/{UPSTREAM}/{stored.repo}/referrers/{stored.image.digest}"
    resp = await wharf.client.get(base)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    body = await resp.json()
    assert [m["digest"] for m in body["manifests"]] == [stored.referrer_digest]
    assert body["manifests"][0]["artifactType"] == SIGNATURE
    resp = await wharf.client.get(base, params={"artifactType": SIGNATURE})
    assert len((await resp.json())["manifests"]) == 1 and resp.headers["OCI-Filters-Applied"] == "artifactType"
    resp = await wharf.client.get(base, params={"artifactType": "application/vnd.example.sbom"})
    assert (await resp.json())["manifests"] == [] and resp.headers["OCI-Filters-Applied"] == "artifactType"
    # the referrer itself, and a subject nothing refers to
    resp = await wharf.client.get(f"/v2/{UPSTREAM}/{stored.repo}/manifests/{stored.referrer_digest}",
                                  headers={"Accept": OCI_MANIFEST})
    assert await resp.read() == stored.referrer
    resp = await wharf.client.get(f"/v2/{UPSTREAM}/{stored.repo}/referrers/{stored.newer.digest}")
    assert (await resp.json())["manifests"] == []
    assert nowhere.requests == []


async def test_token_and_readyz_offline(make_wharf, stored, nowhere):
    wharf = await _offline(make_wharf, stored, nowhere)
    basic = {"Authorization": "Basic " + base64.b64encode(b"someone:pw").decode()}
    for params in ({"scope": f"repository:{UPSTREAM}/{stored.repo}:pull"}, {}):  # a pull, a login
        resp = await wharf.client.get("/token", params=params, headers=basic)
        assert resp.status == 200 and (await resp.json())["token"]
    resp = await wharf.client.get("/readyz")
    assert resp.status == 200 and await resp.json() == {"status": "ready", "offline": [UPSTREAM]}
    assert await (await wharf.client.get("/healthz")).json() == {"status": "ok"}
    assert nowhere.requests == []


async def test_the_upstream_client_of_an_offline_upstream_sends_nothing(make_wharf, stored, nowhere):
    """Defence in depth: even a caller that skips the offline routing gets nothing out."""
    from proxy.oci.digest import Digest
    from proxy.upstream.auth import Credential

    wharf = await _offline(make_wharf, stored, nowhere)
    upstream = wharf.app[keys.UPSTREAMS][UPSTREAM]
    digest = Digest.parse(stored.image.layers[0].digest)
    attempts = [upstream.get_manifest(stored.repo, "v1", None), upstream.head_manifest(stored.repo, "v1", None),
                upstream.head_blob(stored.repo, digest, None), upstream.tags(stored.repo, {}, None),
                upstream.referrers(stored.repo, digest, None, None)]
    for attempt in attempts:
        with pytest.raises(UpstreamOffline, match=f"upstream {UPSTREAM} is offline"):
            await attempt
    with pytest.raises(UpstreamOffline):
        async with upstream.open_blob(stored.repo, digest, None):
            pass
    assert await upstream.check_credentials(stored.repo, Credential.basic("u", "p")) is False
    assert nowhere.requests == []


async def test_one_offline_upstream_beside_an_online_one(make_wharf, stored, nowhere, registry_upstream, repo_name):
    online_name = registry_upstream.split("://", 1)[1]
    wharf = await make_wharf(storage={"root": stored.root}, upstreams=[
        {"name": UPSTREAM, "url": nowhere.url, "offline": True},
        {"name": online_name, "url": registry_upstream}])
    resp = await wharf.client.get(f"/v2/{UPSTREAM}/{stored.repo}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == stored.image.manifest
    status, code, message = await _error(await wharf.client.get(f"/v2/{UPSTREAM}/{stored.repo}/manifests/v9"))
    assert (status, code, message) == (404, "MANIFEST_UNKNOWN",
                                       f"{UPSTREAM}/{stored.repo}:v9 is not in this offline mirror {RULE}")
    fresh = make_image("offline-beside", (700,))
    await push_image(registry_upstream, f"{repo_name}-online", fresh, tag="new")
    await _pull(wharf, f"{online_name}/{repo_name}-online", fresh, "new")  # fetched from the online one
    resp = await wharf.client.get("/readyz")
    assert await resp.json() == {"status": "ready", "offline": [UPSTREAM]}
    assert nowhere.requests == []


async def test_an_adoption_by_another_process_is_served_at_once(make_wharf, stored, nowhere, registry_upstream):
    wharf = await _offline(make_wharf, stored, nowhere)
    name = f"{UPSTREAM}/{stored.repo}"
    resp = await wharf.client.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert await resp.read() == stored.image.manifest  # answered, and remembered for replay
    assert (await wharf.client.get(f"/v2/{name}/manifests/v4")).status == 404
    # an import in another process of the same store: a new tag, and v1 moved
    importer = await make_wharf(named_upstreams={UPSTREAM: registry_upstream}, storage={"root": stored.root})
    added = make_image("offline-added", (900,))
    await push_image(registry_upstream, stored.repo, added, tag="v4")
    await _pull(importer, name, added, "v4")
    records = importer.app[keys.MIRROR_RECORDS]
    records.adopt(_mirrored(stored.repo, added, {"v4": added.digest, "v1": added.digest}), "testlist")
    resp = await wharf.client.get(f"/v2/{name}/manifests/v4", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == added.manifest
    assert "v4" in (await (await wharf.client.get(f"/v2/{name}/tags/list")).json())["tags"]
    deadline = asyncio.get_running_loop().time() + 5
    while True:  # the replayed answer of v1 is dropped once the invalidation stamp is polled (0.1 s)
        resp = await wharf.client.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
        if resp.headers["Docker-Content-Digest"] == added.digest or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert await resp.read() == added.manifest
    assert nowhere.requests == []


async def test_offline_answers_are_counted_as_cache_decisions(make_wharf, stored, nowhere):
    wharf = await _offline(make_wharf, stored, nowhere, fast_paths={"replay": False, "hot_manifests": False,
                                                                   "sendfile": False})
    name = f"{UPSTREAM}/{stored.repo}"
    await wharf.client.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    await wharf.client.get(f"/v2/{name}/manifests/v9")
    text = await (await wharf.client.get("/metrics")).text()
    assert 'wharf_cache_requests_total{kind="tag",result="offline"} 1.0' in text
    assert 'wharf_cache_requests_total{kind="manifest",result="offline_missing"} 1.0' in text


async def test_skopeo_pulls_from_the_offline_mirror(make_wharf, stored, nowhere, tmp_path):
    from support.servers import require_binary
    from test_clients_e2e import client_env, run, run_status, skopeo_files

    skopeo = require_binary("skopeo")
    wharf = await _offline(make_wharf, stored, nowhere)
    host = wharf.url.split("://", 1)[1]
    env, options = client_env(tmp_path / "home"), skopeo_files(tmp_path)
    ref = f"docker://{host}/{UPSTREAM}/{stored.repo}:v1"
    raw = await run([skopeo, *options, "inspect", "--raw", "--tls-verify=false", ref], env)
    assert sha256_digest(raw.encode()) == stored.image.digest
    dest = tmp_path / "image"
    await run([skopeo, *options, "copy", "--src-tls-verify=false", ref, f"dir:{dest}"], env)
    assert (dest / "manifest.json").read_bytes() == stored.image.manifest
    for digest, data in stored.image.blobs.items():
        assert (dest / digest.split(":", 1)[1]).read_bytes() == data
    # the mirrored platform of the sparse index, by tag; all platforms: refused, saying why
    multi = f"docker://{host}/{UPSTREAM}/{stored.multi_repo}:v1"
    raw = await run([skopeo, *options, "inspect", "--raw", "--tls-verify=false", multi], env)
    assert sha256_digest(raw.encode()) == stored.index.digest
    dest = tmp_path / "amd64"
    await run([skopeo, *options, "--override-os", "linux", "--override-arch", "amd64", "copy",
               "--src-tls-verify=false", multi, f"dir:{dest}"], env)
    assert (dest / "manifest.json").read_bytes() == stored.index.image_for("amd64").manifest
    status, stdout, stderr = await run_status([skopeo, *options, "copy", "--all", "--src-tls-verify=false",
                                               multi, f"dir:{tmp_path / 'all'}"], env)
    assert status != 0 and "was not mirrored" in stderr, stderr
    assert nowhere.requests == []
