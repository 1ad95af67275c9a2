"""Pulling through Wharf from a real upstream (Debian's docker-registry): bytes and digests match."""

from __future__ import annotations

import hashlib

from support.images import MANIFEST_ACCEPT, make_image, make_index, push_image


async def test_manifest_and_blobs_by_prefix_match_upstream(registry_upstream, make_wharf, repo_name):
    image = make_image("prefix", (2048, 100_000))
    await push_image(registry_upstream, repo_name, image, tag="1.0")
    wharf = await make_wharf(registry_upstream)
    name = f"{wharf.upstream_name(registry_upstream)}/{repo_name}"

    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200
    assert await resp.read() == image.manifest
    assert resp.headers["Docker-Content-Digest"] == image.digest
    assert resp.headers["Content-Type"] == image.media_type

    for layer in image.layers:
        resp = await wharf.client.get(f"/v2/{name}/blobs/{layer.digest}")
        assert resp.status == 200
        body = await resp.read()
        assert "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
        assert body == layer.data
