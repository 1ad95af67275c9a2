"""Local repositories beside a default upstream: no push can shadow a mirror name, and images
built on cached base images push without uploading the base's layers again."""

from __future__ import annotations

import base64
import json

from support.images import MANIFEST_ACCEPT, make_image, push_image

USERS = {"alice": "alice-pw"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def derived_from(base, name: str):
    """An image whose first layers are ``base``'s (what ``FROM base`` plus one RUN gives)."""
    from support.images import Blob, Image, canonical_json, sha256_digest

    extra = make_image(name, (2000,)).layers
    layers = (*base.layers, *extra)
    config_json = canonical_json({"architecture": "amd64", "os": "linux", "derived": name})
    config = Blob(config_json, sha256_digest(config_json), base.config.media_type)
    manifest = canonical_json({"schemaVersion": 2, "mediaType": base.media_type, "config": config.descriptor(),
                               "layers": [layer.descriptor() for layer in layers]})
    return Image(manifest, sha256_digest(manifest), base.media_type, config, layers)


async def _uploads(wharf) -> int:
    return sum(1 for seen in wharf.seen if seen.method == "POST" and seen.path.endswith("/blobs/uploads/"))


async def test_a_push_never_shadows_a_name_mirror_clients_resolve_upstream(make_wharf, fake_upstream):
    fake = await fake_upstream()
    real = make_image("upstream-original", (300,))
    fake.add_image("rt/img", real, tag="v1")
    fake.add_image("library/alpine", real, tag="3")
    wharf = await make_wharf(named_upstreams={"docker.io": fake.url}, default_upstream="docker.io",
                             local_namespaces=["team"])
    evil = make_image("shadow", (300,))
    for name in ("rt/img", "library/alpine", "alpine"):
        for method, path in (("POST", f"/v2/{name}/blobs/uploads/"),
                             ("PUT", f"/v2/{name}/manifests/v1"),
                             ("DELETE", f"/v2/{name}/manifests/v1")):
            resp = await wharf.client.request(method, path, data=evil.manifest,
                                              headers={"Content-Type": evil.media_type})
            assert resp.status == 403, (method, path)
            error = (await resp.json())["errors"][0]
            assert error["code"] == "DENIED"
            assert "local_namespaces" in error["message"] and "team/" in error["message"]
    for name, tag in (("rt/img", "v1"), ("alpine", "3")):  # mirror clients still get upstream's image
        resp = await wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        assert resp.status == 200 and await resp.read() == real.manifest
    before = fake.count()
    await push_image(wharf.url, "team/app", evil, tag="v1")  # a declared namespace is local
    resp = await wharf.client.get("/v2/team/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == evil.manifest
    assert fake.count() == before, "a local namespace was sent upstream"


async def test_an_image_built_on_a_cached_base_pushes_without_its_base_layers(make_wharf, fake_upstream):
    from proxy.app import BLOBS, BUDGET
    from proxy.oci.digest import Digest

    fake = await fake_upstream()
    upstream = fake.url.split("://", 1)[1]
    base = make_image("tool-v2", (40_000, 50_000))
    fake.add_image("tools/tool", base, tag="v2")
    wharf = await make_wharf(fake.url, default_upstream=upstream, local_namespaces=["team"])
    # docker pull tool:v2 through the mirror
    resp = await wharf.client.get("/v2/tools/tool/manifests/v2", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200
    for blob in base.blobs:
        assert (await wharf.client.get(f"/v2/tools/tool/blobs/{blob}")).status == 200
    # FROM tool:v2 + one layer, pushed: the base layers are found (HEAD 200) and not uploaded again
    derived = derived_from(base, "derived2")
    await push_image(wharf.url, "team/derived2", derived, tag="1")
    assert await _uploads(wharf) == len(derived.blobs) - len(base.layers)
    resp = await wharf.client.get("/v2/team/derived2/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == derived.manifest
    for digest, data in derived.blobs.items():
        resp = await wharf.client.get(f"/v2/team/derived2/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data
    # the base layers now belong to a pushed image: the cache budget never evicts them
    budget = wharf.app[BUDGET]
    budget.max_cached_bytes = 1
    budget.evict()
    for layer in base.layers:
        assert wharf.app[BLOBS].size(Digest.parse(layer.digest)) is not None


async def test_private_cached_layers_are_not_readable_through_a_local_repository(make_wharf, fake_upstream):
    fake = await fake_upstream()
    fake.require_bearer(users=USERS, private={"org/secret"})
    secret = make_image("private-base", (3000,))
    fake.add_image("org/secret", secret, tag="1.0")
    wharf = await make_wharf(fake.url, local_namespaces=["team"])
    prefix = wharf.upstream_name(fake.url)
    layer = secret.layers[0].digest
    resp = await wharf.client.get(f"/v2/{prefix}/org/secret/blobs/{layer}", headers=basic("alice", "alice-pw"))
    assert resp.status == 200  # now cached, learned with alice's credential
    for method in ("HEAD", "GET"):
        resp = await wharf.client.request(method, f"/v2/team/stolen/blobs/{layer}")
        assert resp.status == 404, method
    # and a manifest naming it is refused until the blob is really uploaded
    derived = derived_from(secret, "steal")
    resp = await wharf.client.put("/v2/team/stolen/manifests/1", data=derived.manifest,
                                  headers={"Content-Type": derived.media_type})
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
