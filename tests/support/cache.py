"""Helpers of the cache tests (``tests/test_cache_*.py``): a client's pull, and what the cache lists."""

from __future__ import annotations

from .images import MANIFEST_ACCEPT


async def pull(wharf, name: str, tag: str, image, blobs: bool = True, headers: dict | None = None) -> None:
    """A client's pull: the tag's manifest, then every child manifest and blob it needs."""
    resp = await wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT, **(headers or {})})
    assert resp.status == 200, await resp.text()
    assert await resp.read() == image.manifest
    if not blobs:
        return
    for digest, (body, _) in getattr(image, "manifests", {}).items():
        resp = await wharf.client.get(f"/v2/{name}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT,
                                                                                  **(headers or {})})
        assert resp.status == 200 and await resp.read() == body
    for digest, data in image.blobs.items():
        resp = await wharf.client.get(f"/v2/{name}/blobs/{digest}", headers=headers or {})
        assert resp.status == 200 and await resp.read() == data


def image_bytes(image) -> int:
    """The manifest and everything it references, each once."""
    parts = {image.digest: image.manifest, **image.blobs}
    parts.update({digest: body for digest, (body, _) in getattr(image, "manifests", {}).items()})
    return sum(len(data) for data in parts.values())


async def listed(wharf, **params) -> dict:
    """``GET /api/cache/repositories`` as the test's admin, by repository name."""
    resp = await wharf.client.get("/api/cache/repositories", params=params)
    assert resp.status == 200, await resp.text()
    return {repo["name"]: repo for repo in (await resp.json())["repositories"]}
