"""Purge: ``POST /api/cache/purge`` and ``wharf cache purge`` against a counting fake upstream.

A purged tag asks upstream once on its next pull; what is left (other tags, pushed and mirrored
content) is untouched; a download in flight finishes byte-exact; a purge beside a running
``wharf serve`` of two workers reaches both."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess

import aiohttp

from support.cache import listed, pull
from support.fake_upstream import Fault
from support.images import (DOCKER_CONFIG, DOCKER_MANIFEST, MANIFEST_ACCEPT, Blob, Image, canonical_json,
                            make_image, push_image)
from support.mirror import write_list
from support.servers import free_port
from support.wharf_serve import start_wharf, wharf_argv, wharf_env, write_config

from proxy.app import BLOBS
from proxy.http import keys
from proxy.mirror.lists import load_list
from proxy.mirror.sync_command import mirror_sync_of
from proxy.oci.digest import Digest


def _stored(wharf, digest: str) -> bool:
    return wharf.app[BLOBS].size(Digest.parse(digest)) is not None


def _content(image) -> set[str]:
    return {image.digest, *image.blobs}


def upstream_requests(fake, repo: str | None = None) -> int:
    """What upstream was asked (manifests and blobs; the ping and tokens aside)."""
    return sum(1 for r in fake.requests if "/manifests/" in r.path or "/blobs/" in r.path
               if repo is None or r.path.startswith(f"/v2/{repo}/"))


async def purge(wharf, status: int = 200, **body) -> dict:
    resp = await wharf.client.post("/api/cache/purge", json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


def image_with(seed: str, layers: tuple[Blob, ...]) -> Image:
    """An image over given layers (a local image built on an upstream base shares them)."""
    config_json = canonical_json({"architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
                                  "rootfs": {"type": "layers", "diff_ids": [f"sha256:{seed:0>64}"[:71]]}})
    config = Blob(config_json, "sha256:" + hashlib.sha256(config_json).hexdigest(), DOCKER_CONFIG)
    manifest = canonical_json({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config.descriptor(),
                               "layers": [layer.descriptor() for layer in layers]})
    return Image(manifest, "sha256:" + hashlib.sha256(manifest).hexdigest(), DOCKER_MANIFEST, config, layers,
                 "linux", "amd64")


async def test_after_a_purge_the_next_pull_asks_upstream_once(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("purge-once", (3000, 5000))
    fake.add_image("team/app", image, tag="v1")
    wharf = await make_wharf(fake.url)
    name = f"{wharf.upstream_name(fake.url)}/team/app"
    await pull(wharf, name, "v1", image)
    for _ in range(3):  # answered from the cache: from memory (replayed) after the first
        await pull(wharf, name, "v1", image)
    fake.reset_counts()
    await pull(wharf, name, "v1", image)
    assert upstream_requests(fake) == 0

    report = await purge(wharf, ref=f"{name}:v1")
    assert [(t["name"], t["tag"], t["digest"]) for t in report["tags"]] == [(name, "v1", image.digest)]
    assert report["removed"] == 4 and report["freed_bytes"] == len(image.manifest) + sum(
        len(b) for b in image.blobs.values())
    assert not any(_stored(wharf, d) for d in _content(image))
    assert name not in await listed(wharf)

    await pull(wharf, name, "v1", image)
    assert fake.count("GET", fake.manifest_path("team/app", "v1")) == 1
    assert fake.count("HEAD") == 0
    assert all(fake.count("GET", fake.blob_path("team/app", d)) == 1 for d in image.blobs)
    fake.reset_counts()
    for _ in range(3):
        await pull(wharf, name, "v1", image)
    assert upstream_requests(fake) == 0  # cached again
    assert [t["pulls"] for t in (await listed(wharf))[name]["tags"]] == [4]


async def test_purge_leaves_pushed_mirrored_and_shared_content(fake_upstream, make_wharf, tmp_path):
    fake = await fake_upstream()
    gone = make_image("purge-leaves", (500, 600, 700))  # layers L0, L1, L2
    stays = make_image("purge-leaves", (500,))           # L0, under another repository
    mirrored = make_image("purge-mirrored", (800,))
    fake.add_image("team/a", gone, tag="gone")
    fake.add_image("team/a", mirrored, tag="mirrored")
    fake.add_image("team/b", stays, tag="stays")
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    await pull(wharf, f"{host}/team/a", "gone", gone)
    await pull(wharf, f"{host}/team/b", "stays", stays)
    listing = load_list(write_list(tmp_path / "kept.yaml", [{"name": f"{host}/team/a", "tags": ["mirrored"]}],
                                   name="kept"))
    assert (await mirror_sync_of(wharf.app).sync(listing)).images[0].ok
    local = image_with("local", (gone.layers[1],))  # a local image built on L1
    await push_image(wharf.url, "local/app", local, tag="v1")

    report = await purge(wharf, repo=f"{host}/team/a")
    assert [t["tag"] for t in report["tags"]] == ["gone"]
    assert [t["tag"] for t in report["kept"]] == ["mirrored"]
    assert not _stored(wharf, gone.digest) and not _stored(wharf, gone.config.digest)
    assert not _stored(wharf, gone.layers[2].digest)   # only the purged tag needed it
    assert _stored(wharf, gone.layers[0].digest)       # team/b:stays needs it
    assert _stored(wharf, gone.layers[1].digest)       # pushed: a local image needs it
    assert all(_stored(wharf, d) for d in _content(mirrored)) and all(_stored(wharf, d) for d in _content(stays))

    fake.reset_counts()
    await pull(wharf, f"{host}/team/b", "stays", stays)
    await pull(wharf, f"{host}/team/a", "mirrored", mirrored)
    resp = await wharf.client.get("/v2/local/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == local.manifest
    for digest, data in local.blobs.items():
        resp = await wharf.client.get(f"/v2/local/app/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data
    assert upstream_requests(fake) == 0
    assert set(t["tag"] for t in (await listed(wharf))[f"{host}/team/a"]["tags"]) == {"mirrored"}

    everything = await purge(wharf, upstream=host)  # the rest of this upstream's cache
    assert [t["tag"] for t in everything["tags"]] == ["stays"]
    assert [t["tag"] for t in everything["kept"]] == ["mirrored"]
    assert not _stored(wharf, gone.layers[0].digest) and _stored(wharf, gone.layers[1].digest)
    assert all(_stored(wharf, d) for d in _content(mirrored))


async def test_a_download_in_flight_finishes_byte_exact_through_a_purge(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("purge-in-flight", (600_000, 2_000_000))
    fake.add_image("team/slow", image, tag="v1")
    slow_layer, stored_layer = image.layers
    fake.fault(fake.blob_path("team/slow", slow_layer.digest), Fault(bytes_per_second=400_000, methods=("GET",)))
    wharf = await make_wharf(fake.url)
    name = f"{wharf.upstream_name(fake.url)}/team/slow"
    resp = await wharf.client.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200
    resp = await wharf.client.get(f"/v2/{name}/blobs/{stored_layer.digest}")
    assert await resp.read() == stored_layer.data  # stored now

    async def download(digest: str, pause: bool) -> bytes:
        async with wharf.client.get(f"/v2/{name}/blobs/{digest}") as answer:
            assert answer.status == 200
            first = await answer.content.read(65536)
            if pause:
                await asyncio.sleep(0.5)  # a client reading slowly: the stored blob is being sent
            return first + await answer.content.read()

    filling = asyncio.ensure_future(download(slow_layer.digest, False))
    reading = asyncio.ensure_future(download(stored_layer.digest, True))
    fills = wharf.app[keys.REGISTRY].fills
    for _ in range(200):
        fill = fills.get(Digest.parse(slow_layer.digest))
        if fill is not None and fill.started.done() and getattr(fill.writer, "written", 0) > 0:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the fill never began")
    assert not filling.done()
    report = await purge(wharf, repo=name)
    assert [t["tag"] for t in report["tags"]] == ["v1"]
    assert hashlib.sha256(await filling).hexdigest() == slow_layer.digest.split(":")[1]
    assert hashlib.sha256(await reading).hexdigest() == stored_layer.digest.split(":")[1]
    fake.reset_counts()
    resp = await wharf.client.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == image.manifest
    assert fake.count("GET", fake.manifest_path("team/slow", "v1")) == 1  # the purged tag is asked for again


async def test_dry_run_and_older_than_change_only_what_they_say(fake_upstream, make_wharf):
    fake = await fake_upstream()
    old, new = make_image("purge-old", (100,)), make_image("purge-new", (200,))
    fake.add_image("team/age", old, tag="old")
    fake.add_image("team/age", new, tag="new")
    wharf = await make_wharf(fake.url)
    name = f"{wharf.upstream_name(fake.url)}/team/age"
    await pull(wharf, name, "old", old)
    await asyncio.sleep(3)
    await pull(wharf, name, "new", new)

    dry = await purge(wharf, repo=name, dry_run=True)
    assert dry["dry_run"] is True and {t["tag"] for t in dry["tags"]} == {"old", "new"}
    assert dry["removed"] == 6
    fake.reset_counts()
    await pull(wharf, name, "old", old)
    assert upstream_requests(fake) == 0 and all(_stored(wharf, d) for d in _content(old))

    await pull(wharf, name, "new", new)  # "new" pulled just now, "old" pulled ~3 s ago (just above)
    await asyncio.sleep(2.5)
    await pull(wharf, name, "new", new)
    report = await purge(wharf, repo=name, older_than="2s")
    assert [t["tag"] for t in report["tags"]] == ["old"]
    assert not _stored(wharf, old.digest) and all(_stored(wharf, d) for d in _content(new))
    assert (await purge(wharf, repo=name, older_than="1h"))["tags"] == []


async def test_bad_purges_are_refused_with_reasons(fake_upstream, make_wharf):
    fake = await fake_upstream()
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    cases = [({}, "exactly one"), ({"ref": f"{host}/a:v1", "repo": f"{host}/a"}, "exactly one"),
             ({"ref": f"{host}/team/app"}, "names no tag"), ({"ref": f"{host}/a@sha256:abc"}, "no digest"),
             ({"upstream": "nowhere.test"}, "no configured upstream"),
             ({"upstream": host, "older_than": "soon"}, "no duration"),
             ({"upstream": host, "older_than": True}, "older_than"),
             ({"upstream": host, "dry_run": "yes"}, "dry_run"), ({"repo": "local/app"}, "local repository"),
             ({"upstream": host, "everything": True}, "unknown field")]
    for body, words in cases:
        answer = await purge(wharf, 422, **body)
        assert words in answer["message"], (body, answer)
    resp = await wharf.client.post("/api/cache/purge", data=b"not json")
    assert resp.status == 422 and "JSON" in (await resp.json())["message"]


def _cli(config, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(wharf_argv("cache", "purge", *args, "--config", str(config)), env=wharf_env(),
                          capture_output=True, text=True, timeout=60)


async def test_wharf_cache_purge_beside_a_server_of_two_workers(fake_upstream, tmp_path):
    """The command is one more process of the store: both workers drop what they remember of the
    tag (hot set, replayed answers, freshness) and the next pulls ask upstream once."""
    fake = await fake_upstream()
    image = make_image("purge-workers", (1000,))
    fake.add_image("team/app", image, tag="v1")
    host = "upstream.test"
    port = free_port()
    config = {"listen": f"127.0.0.1:{port}", "workers": 2, "storage": {"root": str(tmp_path / "store")},
              "upstreams": [{"name": host, "url": fake.url, "tag_ttl": 300}], "log": {"access_log": False}}
    server = await asyncio.to_thread(start_wharf, tmp_path, config)
    try:
        url = f"{server.url}/v2/{host}/team/app/manifests/v1"

        async def pulls(times: int) -> None:
            for _ in range(times):  # a connection each: the two workers take turns
                async with aiohttp.ClientSession() as session:
                    async with session.get(url, headers={"Accept": MANIFEST_ACCEPT}) as resp:
                        assert resp.status == 200 and await resp.read() == image.manifest

        await pulls(12)
        assert fake.count("GET", fake.manifest_path("team/app", "v1")) == 1
        dry = await asyncio.to_thread(_cli, server.config_path, f"{host}/team/app:v1", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would drop {host}/team/app:v1" in dry.stdout
        done = await asyncio.to_thread(_cli, server.config_path, f"{host}/team/app:v1")
        assert done.returncode == 0, done.stderr
        assert f"dropped {host}/team/app:v1" in done.stdout and "1 tags dropped" in done.stdout
        await asyncio.sleep(0.5)  # each worker polls the store's invalidation stamp every 0.1 s
        await pulls(12)
        assert fake.count("GET", fake.manifest_path("team/app", "v1")) == 2
        assert fake.count("HEAD", fake.manifest_path("team/app", "v1")) == 0

        for args, words in ((("--repo", f"{host}/team/app", "--older-than", "soon"), "no duration"),
                            ((), "exactly one"), (("--upstream", "nowhere.test"), "no configured upstream")):
            bad = await asyncio.to_thread(_cli, server.config_path, *args)
            assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr
        broken = write_config(tmp_path / "broken", {"storage": {"root": 5}})
        bad = await asyncio.to_thread(_cli, broken, "--upstream", host)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
    finally:
        server.stop()
