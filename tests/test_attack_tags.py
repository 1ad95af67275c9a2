"""Attack: an anonymous client made Wharf store one copy of a repository's tag list per distinct
``n`` / ``last`` it sent (``?n=101``, ``?n=102``, … ``?last=<anything>``), on disk for good and in
the metadata front in memory: a few requests a second filled the disk and the memory. Wharf now
keeps one copy per repository, and serves pages cut from it while upstream is down. Keeping that
copy is best effort: on a full disk, upstream's answer still goes through (it was a 507)."""

from __future__ import annotations

import base64

from support.fake_upstream import ANY_PATH, Fault
from support.images import make_image
from test_disk_full import fill, small_disk  # noqa: F401  (a 4 MiB tmpfs, and filling it)


def _stored_tag_lists(wharf) -> list[str]:
    from proxy.app import META

    return [key for key in wharf.app[META]._disk.iterkeys() if str(key).startswith("doc:tags:")]


async def _setup(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("tag-lists", (10,))
    for i in range(12):
        fake.add_image("org/app", image, tag=f"t{i:02d}")
    wharf = await make_wharf(fake.url)
    return fake, wharf, f"{wharf.upstream_name(fake.url)}/org/app"


async def test_distinct_page_queries_do_not_store_a_copy_each(fake_upstream, make_wharf):
    fake, wharf, name = await _setup(fake_upstream, make_wharf)
    for i in range(30):
        resp = await wharf.client.get(f"/v2/{name}/tags/list", params={"n": str(100 + i)})
        assert resp.status == 200
        resp = await wharf.client.get(f"/v2/{name}/tags/list", params={"last": f"zz{i}"})
        assert resp.status == 200 and (await resp.json())["tags"] == []
    assert len(_stored_tag_lists(wharf)) <= 1


async def test_a_stale_tag_list_is_served_whole_and_paged_when_upstream_is_down(fake_upstream, make_wharf):
    fake, wharf, name = await _setup(fake_upstream, make_wharf)
    resp = await wharf.client.get(f"/v2/{name}/tags/list")
    every = (await resp.json())["tags"]
    assert len(every) == 12
    fake.fault(ANY_PATH, Fault(status=503))
    resp = await wharf.client.get(f"/v2/{name}/tags/list")
    assert resp.status == 200 and (await resp.json())["tags"] == every
    resp = await wharf.client.get(f"/v2/{name}/tags/list", params={"n": "5"})
    assert resp.status == 200 and (await resp.json())["tags"] == every[:5]
    assert resp.headers["Link"].startswith(f"</v2/{name}/tags/list?n=5&last={every[4]}")
    resp = await wharf.client.get(f"/v2/{name}/tags/list", params={"n": "5", "last": every[9]})
    assert resp.status == 200 and (await resp.json())["tags"] == every[10:]
    assert "Link" not in resp.headers


async def test_a_stale_private_tag_list_goes_only_to_a_reader(fake_upstream, make_wharf):
    fake = await fake_upstream()
    fake.require_bearer(users={"alice": "alice-pw"}, private={"org/secret"})
    fake.add_image("org/secret", make_image("secret-tags", (10,)), tag="v1")
    wharf = await make_wharf(fake.url)
    name = f"{wharf.upstream_name(fake.url)}/org/secret"
    alice = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}
    assert (await wharf.client.get(f"/v2/{name}/tags/list", headers=alice)).status == 200
    fake.fault(ANY_PATH, Fault(status=503))
    resp = await wharf.client.get(f"/v2/{name}/tags/list", params={"n": "1"}, headers=alice)
    assert resp.status == 200 and (await resp.json())["tags"] == ["v1"]
    for params in ({}, {"n": "1"}):
        assert (await wharf.client.get(f"/v2/{name}/tags/list", params=params)).status == 503



async def test_a_tag_list_passes_through_when_the_disk_is_full(fake_upstream, make_wharf, small_disk):
    """The stale copy is best effort: a full disk must not turn upstream's answer into a 507."""
    fake = await fake_upstream()
    fake.add_image("org/app", make_image("tags-on-full", (10,)), tag="v1")
    wharf = await make_wharf(fake.url, storage={"root": str(small_disk), "min_free_bytes": 256 * 1024})
    name = f"{wharf.upstream_name(fake.url)}/org/app"
    filler = fill(small_disk)
    try:
        fake.add_image("org/app", make_image("tags-on-full-2", (10,)), tag="v2")
        resp = await wharf.client.get(f"/v2/{name}/tags/list")
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["tags"] == ["v1", "v2"]
    finally:
        filler.unlink()
