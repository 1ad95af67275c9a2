"""Warm-ups: ``POST /api/cache/warm`` and ``wharf cache warm`` fetch images into the cache (evictable,
not kept) so that the following pull hits the cache only: upstream sees zero requests."""

from __future__ import annotations

import asyncio
import shlex
import subprocess

from support.cache import listed, pull
from support.images import make_image, make_index
from support.wharf_serve import wharf_argv, wharf_env, write_config

from proxy.app import BLOBS, META
from proxy.oci.digest import Digest


async def warm(wharf, status: int = 200, **body) -> dict:
    resp = await wharf.client.post("/api/cache/warm", json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_after_a_warm_up_the_pull_hits_the_cache_only(fake_upstream, make_wharf):
    fake = await fake_upstream()
    app, multi = make_image("warm-app", (4000, 9000)), make_index("warm-multi", (3000,))
    fake.add_image("team/app", app, tag="v1")
    fake.add_image("team/multi", multi, tag="latest")
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    answer = await warm(wharf, images=[f"{host}/team/app:v1", f"{host}/team/multi"])  # no tag: latest
    assert answer["ok"] is True
    assert {image["name"]: image["tags"] for image in answer["images"]} == {
        f"{host}/team/app": ["v1"], f"{host}/team/multi": ["latest"]}
    assert sum(image["fetched_blobs"] for image in answer["images"]) == len(app.blobs) + len(multi.blobs)

    fake.reset_counts()
    await pull(wharf, f"{host}/team/app", "v1", app)
    await pull(wharf, f"{host}/team/multi", "latest", multi)
    assert fake.requests == []  # not one request upstream

    meta = wharf.app[META]
    assert not any(meta.is_kept(d) for d in (app.digest, *app.blobs))  # a warm-up keeps nothing: evictable
    repos = await listed(wharf)
    tag = repos[f"{host}/team/app"]["tags"][0]
    assert tag["tag"] == "v1" and tag["pulls"] == 1 and tag["size"] > 13000

    again = await warm(wharf, images=[f"{host}/team/app:v1"])  # still fresh: nothing fetched, nothing asked
    assert again["images"][0]["fetched_blobs"] == 0
    assert fake.requests == []


async def test_a_warm_up_of_one_platform_fetches_only_it(fake_upstream, make_wharf):
    fake = await fake_upstream()
    multi = make_index("warm-platform", (2000,))
    fake.add_image("team/multi", multi, tag="v1")
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    answer = await warm(wharf, images=[f"{host}/team/multi:v1"], platforms=["linux/arm64"])
    assert answer["ok"] is True
    arm, amd = multi.image_for("arm64"), multi.image_for("amd64")
    blobs = wharf.app[BLOBS]
    assert all(blobs.size(Digest.parse(d)) is not None for d in arm.blobs)
    assert all(blobs.size(Digest.parse(d)) is None for d in amd.layer_digests)


async def test_bad_warm_ups_are_refused_and_failures_named(fake_upstream, make_wharf):
    fake = await fake_upstream()
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    for body, words in (({}, "images"), ({"images": []}, "images"), ({"images": [5]}, "images"),
                        ({"images": ["local/app:v1"]}, "local repository"),
                        ({"images": [f"{host}/team/app@sha256:{'a' * 64}"]}, "not digests"),
                        ({"images": [f"{host}/team/app:bad tag"]}, "bad tag"),
                        ({"images": [f"{host}/team/app"], "platforms": ["amd64"]}, "platform"),
                        ({"images": [f"{host}/team/app"], "platforms": "linux/amd64"}, "platforms")):
        answer = await warm(wharf, 422, **body)
        assert words in answer["message"], (body, answer)
    missing = await warm(wharf, images=[f"{host}/team/nothing:v1"])
    assert missing["ok"] is False and "v1" in missing["images"][0]["failed"]


async def test_wharf_cache_warm_on_a_terminal_beside_the_server(fake_upstream, make_wharf, tmp_path):
    """The command warms the store a running Wharf serves, with the mirror sync's live display."""
    fake = await fake_upstream()
    image = make_image("warm-cli", (300_000, 700_000))
    fake.add_image("team/cli", image, tag="v2")
    store = tmp_path / "store"
    wharf = await make_wharf(fake.url, storage={"root": str(store)})
    host = wharf.upstream_name(fake.url)
    config = write_config(tmp_path, {"storage": {"root": str(store)}, "log": {"access_log": False},
                                     "upstreams": [{"name": host, "url": fake.url, "tag_ttl": 300}]})
    command = " ".join(shlex.quote(a) for a in wharf_argv("cache", "warm", f"{host}/team/cli:v2",
                                                          "--config", str(config)))
    env = {**wharf_env(), "COLUMNS": "160", "TERM": "xterm"}
    done = await asyncio.to_thread(subprocess.run, ["script", "-qec", command, "/dev/null"], env=env,
                                   capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout
    for words in ("images", "blobs", "bytes", "1/1", "warm-up: 1 of 1 images synced"):
        assert words in done.stdout, (words, done.stdout[-2000:])
    fake.reset_counts()
    await pull(wharf, f"{host}/team/cli", "v2", image)
    assert fake.requests == []

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(wharf_argv("cache", "warm", *args, "--config", str(config)), env=wharf_env(),
                              capture_output=True, text=True, timeout=60)

    plain = await asyncio.to_thread(run, f"{host}/team/cli:v2")  # not a terminal: one line per image
    assert plain.returncode == 0 and plain.stdout.splitlines()[0].startswith(f"{host}/team/cli: ok tags v2")
    failed = await asyncio.to_thread(run, f"{host}/team/gone:v1")
    assert failed.returncode == 1 and "failed:" in failed.stdout
    bad = await asyncio.to_thread(run, "local/app:v1")
    assert bad.returncode == 2 and "local repository" in bad.stderr and "Traceback" not in bad.stderr
