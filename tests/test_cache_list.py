"""What the cache holds: ``GET /api/cache/repositories``, ``wharf cache list`` and the index behind
them (and the dashboard's ``top``), against a counting fake upstream."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

from support.cache import image_bytes, listed, pull
from support.images import MANIFEST_ACCEPT, make_image, make_index
from support.wharf_serve import wharf_argv, wharf_env, write_config

from proxy.app import BLOBS, META
from proxy.http import keys
from proxy.storage.cache_index import INDEX_FILE, CacheIndex


async def test_the_list_shows_what_was_pulled_with_sizes_pull_counts_and_times(fake_upstream, make_wharf):
    fake = await fake_upstream()
    app_v1, app_v2 = make_image("list-app-1", (1000, 3000)), make_image("list-app-2", (2000,))
    multi = make_index("list-multi", (1500,))
    fake.add_image("team/app", app_v1, tag="v1")
    fake.add_image("team/app", app_v2, tag="v2")
    fake.add_image("team/multi", multi, tag="latest")
    fake.add_image("team/never", make_image("list-never", (10,)), tag="v1")
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    before = time.time()
    for _ in range(3):
        await pull(wharf, f"{host}/team/app", "v1", app_v1)   # the 2nd and 3rd may be replayed answers
    await pull(wharf, f"{host}/team/app", "v2", app_v2)
    await pull(wharf, f"{host}/team/multi", "latest", multi)
    resp = await wharf.client.head(f"/v2/{host}/team/app/manifests/v2", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200  # a HEAD by tag resolves the tag too (containerd pulls so)

    repos = await listed(wharf)
    assert set(repos) == {f"{host}/team/app", f"{host}/team/multi"}  # never pulled: not cached
    app = repos[f"{host}/team/app"]
    tags = {t["tag"]: t for t in app["tags"]}
    assert tags["v1"]["digest"] == app_v1.digest and tags["v1"]["media_type"] == app_v1.media_type
    assert tags["v1"]["size"] == image_bytes(app_v1)
    assert tags["v2"]["size"] == image_bytes(app_v2)
    assert tags["v1"]["pulls"] == 3 and tags["v2"]["pulls"] == 2
    assert app["pulls"] == 5
    assert tags["v1"]["public"] is True
    for tag in tags.values():
        pulled = time.mktime(time.strptime(tag["last_pulled"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert before - 2 <= pulled <= time.time() + 2
        assert tag["cached_at"] is not None
    multi_tag = repos[f"{host}/team/multi"]["tags"][0]
    assert multi_tag["size"] == image_bytes(multi)  # the index, its platforms' manifests and their blobs

    only = await listed(wharf, repo=f"{host}/team/multi")
    assert list(only) == [f"{host}/team/multi"]
    assert await listed(wharf, upstream=host) == repos
    resp = await wharf.client.get("/api/cache/repositories", params={"upstream": "nowhere.test"})
    assert resp.status == 422 and "nowhere.test" in (await resp.json())["message"]
    resp = await wharf.client.get("/api/cache/repositories", params={"repo": "NOT A NAME"})
    assert resp.status == 422

    top = await wharf.app[keys.CACHE_INDEX].top("pulls", 1)
    assert [(t.repo, t.tag, t.pulls) for t in top] == [("team/app", "v1", 3)]
    largest = await wharf.app[keys.CACHE_INDEX].top("size", 10)
    assert [t.size for t in largest] == sorted((t.size for t in largest), reverse=True)
    assert {(t.upstream, t.repo, t.tag) for t in largest} == {(host, "team/app", "v1"), (host, "team/app", "v2"),
                                                               (host, "team/multi", "latest")}


async def test_shared_content_counts_once_per_repository(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("list-shared", (4000, 100))
    fake.add_image("team/same", image, tag="a")
    fake.add_image("team/same", image, tag="b")
    wharf = await make_wharf(fake.url)
    name = f"{wharf.upstream_name(fake.url)}/team/same"
    await pull(wharf, name, "a", image)
    await pull(wharf, name, "b", image)
    repo = (await listed(wharf))[name]
    assert [t["size"] for t in repo["tags"]] == [image_bytes(image)] * 2
    assert repo["size"] == image_bytes(image)


async def test_a_tag_that_moved_upstream_shows_its_new_digest(fake_upstream, make_wharf):
    fake = await fake_upstream()
    first, second = make_image("list-moved-1", (100,)), make_image("list-moved-2", (300,))
    fake.add_image("team/moving", first, tag="latest")
    wharf = await make_wharf(fake.url, upstream_options={"tag_ttl": 0})  # revalidated on every pull
    name = f"{wharf.upstream_name(fake.url)}/team/moving"
    await pull(wharf, name, "latest", first)
    [before] = (await listed(wharf))[name]["tags"]
    fake.add_image("team/moving", second, tag="latest")
    await pull(wharf, name, "latest", second)
    [after] = (await listed(wharf))[name]["tags"]
    assert (before["digest"], after["digest"]) == (first.digest, second.digest)
    assert after["size"] == image_bytes(second) and after["pulls"] == 2
    assert after["cached_at"] >= before["cached_at"]


async def test_pulls_counted_by_two_workers_add_up(fake_upstream, make_wharf):
    """Two processes of one store (here: two indexes over the same files) flush their own counts."""
    fake = await fake_upstream()
    image = make_image("list-workers", (100,))
    fake.add_image("team/two", image, tag="v1")
    wharf = await make_wharf(fake.url)
    name = f"{wharf.upstream_name(fake.url)}/team/two"
    await pull(wharf, name, "v1", image)
    other = CacheIndex(wharf.app[BLOBS].root, wharf.app[BLOBS], wharf.app[META])
    try:
        scope = name
        for _ in range(4):
            other.note_pull(scope, "v1")
        await other.flush()
        await wharf.app[keys.CACHE_INDEX].flush()
        assert [t["pulls"] for t in (await listed(wharf))[name]["tags"]] == [5]
    finally:
        other.close()


async def test_a_store_cached_before_the_index_existed_is_indexed_at_start(fake_upstream, make_wharf, tmp_path):
    fake = await fake_upstream()
    image = make_image("list-old-store", (100,))
    fake.add_image("team/old", image, tag="v1")
    store = tmp_path / "old-store"
    first = await make_wharf(fake.url, storage={"root": str(store)})
    name = f"{first.upstream_name(fake.url)}/team/old"
    await pull(first, name, "v1", image)
    await first.client.close()  # the app stops: the index is flushed and closed
    (store / INDEX_FILE).unlink()
    for suffix in ("-wal", "-shm"):
        (store / f"{INDEX_FILE}{suffix}").unlink(missing_ok=True)
    second = await make_wharf(fake.url, storage={"root": str(store)})
    repo = (await listed(second))[name]
    assert [(t["tag"], t["digest"], t["size"]) for t in repo["tags"]] == [("v1", image.digest, image_bytes(image))]


async def test_wharf_cache_list_beside_the_running_server(fake_upstream, make_wharf, tmp_path):
    fake = await fake_upstream()
    image = make_image("list-cli", (2048,))
    fake.add_image("team/cli", image, tag="v1")
    store = tmp_path / "cli-store"
    wharf = await make_wharf(fake.url, storage={"root": str(store)})
    host = wharf.upstream_name(fake.url)
    await pull(wharf, f"{host}/team/cli", "v1", image)
    await pull(wharf, f"{host}/team/cli", "v1", image, blobs=False)
    await wharf.app[keys.CACHE_INDEX].flush()  # what the server's next periodic flush writes
    config = write_config(tmp_path, {"storage": {"root": str(store)}, "log": {"access_log": False},
                                     "upstreams": [{"name": host, "url": fake.url}]})

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(wharf_argv("cache", "list", *args, "--config", str(config)), env=wharf_env(),
                              capture_output=True, text=True, timeout=60)

    done = await asyncio.to_thread(run)
    assert done.returncode == 0, done.stderr
    header, row, summary = done.stdout.splitlines()
    assert header.split()[:4] == ["REPOSITORY", "TAG", "DIGEST", "SIZE"]
    assert row.split()[:3] == [f"{host}/team/cli", "v1", image.digest[:19]]
    assert row.split()[-1] == "2"  # pulls
    assert "1 repositories, 1 tags" in summary
    as_json = await asyncio.to_thread(run, "--json")
    doc = json.loads(as_json.stdout)
    assert doc["repositories"][0]["tags"][0]["size"] == image_bytes(image)
    bad = await asyncio.to_thread(run, "--upstream", "nowhere.test")
    assert bad.returncode == 2 and "nowhere.test" in bad.stderr and "Traceback" not in bad.stderr
