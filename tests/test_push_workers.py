"""Pushes across worker processes sharing one store: what one worker changes, the others serve.

Two apps on one storage root stand for two ``wharf serve`` workers (each has its own in-memory
metadata front); a push, a re-tag and deletes through one must be what the other answers.
"""

from __future__ import annotations

import asyncio

from support.images import MANIFEST_ACCEPT, make_image, push_image, sha256_digest

OCTET = {"Content-Type": "application/octet-stream"}


async def two_workers(make_wharf, tmp_path):
    options = {"storage": {"root": str(tmp_path / "shared-store")}, "workers": 2, "gc": {"interval_seconds": 0}}
    return await make_wharf(**options), await make_wharf(**options)


async def digest_of(wharf, repo: str, tag: str) -> tuple[int, str | None]:
    resp = await wharf.client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
    return resp.status, resp.headers.get("Docker-Content-Digest")


async def test_push_retag_and_delete_are_seen_by_the_other_worker(make_wharf, repo_name, tmp_path):
    a, b = await two_workers(make_wharf, tmp_path)
    first, second = make_image("workers-1", (1000,)), make_image("workers-2", (2000,))
    await push_image(a.url, repo_name, first, tag="latest")
    assert await digest_of(b, repo_name, "latest") == (200, first.digest)
    await push_image(a.url, repo_name, second, tag="latest")
    assert await digest_of(b, repo_name, "latest") == (200, second.digest)
    resp = await b.client.get(f"/v2/{repo_name}/tags/list")
    assert (await resp.json())["tags"] == ["latest"]

    await a.client.delete(f"/v2/{repo_name}/manifests/{second.digest}")
    assert (await digest_of(b, repo_name, "latest"))[0] == 404
    layer = second.layers[0].digest
    assert (await b.client.head(f"/v2/{repo_name}/blobs/{layer}")).status == 200
    await a.client.delete(f"/v2/{repo_name}/blobs/{layer}")
    assert (await b.client.head(f"/v2/{repo_name}/blobs/{layer}")).status == 404
    resp = await b.client.get("/v2/_catalog")
    assert repo_name in (await resp.json())["repositories"]


async def test_an_upload_started_on_one_worker_finishes_on_the_other(make_wharf, repo_name, tmp_path):
    a, b = await two_workers(make_wharf, tmp_path)
    data = b"spread over workers" * 1000
    resp = await a.client.post(f"/v2/{repo_name}/blobs/uploads/")
    location = resp.headers["Location"]
    assert (await a.client.patch(location, data=data[:5000], headers={**OCTET, "Content-Range": "0-4999"})).status == 202
    resp = await b.client.patch(location, data=data[5000:], headers={**OCTET, "Content-Range": f"5000-{len(data) - 1}"})
    assert resp.status == 202
    resp = await a.client.put(f"{location}?digest={sha256_digest(data)}")
    assert resp.status == 201
    assert await (await b.client.get(f"/v2/{repo_name}/blobs/{sha256_digest(data)}")).read() == data


async def test_concurrent_tag_pushes_through_two_workers_lose_no_tag(make_wharf, repo_name, tmp_path):
    a, b = await two_workers(make_wharf, tmp_path)
    image = make_image("workers-tags", (500,))
    await push_image(a.url, repo_name, image, tag="base")
    await asyncio.gather(*(push_image((a, b)[i % 2].url, repo_name, image, tag=f"t{i}") for i in range(10)))
    for wharf in (a, b):
        resp = await wharf.client.get(f"/v2/{repo_name}/tags/list")
        assert (await resp.json())["tags"] == sorted(["base", *(f"t{i}" for i in range(10))])
