"""Garbage collection: unreferenced pushed blobs go, live and recent content stays, pushes stay safe."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from support.images import MANIFEST_ACCEPT, make_image, make_index, push_image, sha256_digest

from proxy.app import BLOBS, META, UPLOADS
from proxy.http.keys import CONFIG
from proxy.oci.digest import Digest
from proxy.registry.gc import collect

OCTET = {"Content-Type": "application/octet-stream"}


def stored(wharf, digest: str) -> bool:
    return wharf.app[BLOBS].size(Digest.parse(digest)) is not None


async def run_gc(wharf, grace: float = 0.0, dry_run: bool = False):
    return await collect(wharf.app[BLOBS], wharf.app[META], wharf.app[UPLOADS], grace, dry_run=dry_run)


async def test_gc_removes_what_no_manifest_references_and_keeps_the_rest(make_wharf, repo_name):
    wharf = await make_wharf(gc={"interval_seconds": 0})
    keep = make_image("gc-keep", (1000, 2000))
    drop = make_image("gc-drop", (3000,))
    index = make_index("gc-index", (500,), oci=True)
    await push_image(wharf.url, repo_name, keep, tag="keep")
    await push_image(wharf.url, repo_name, drop, tag="drop")
    await push_image(wharf.url, repo_name + "-idx", index, tag="multi")
    untagged = make_image("gc-untagged", (700,))
    await push_image(wharf.url, repo_name, untagged, tag=None)
    resp = await wharf.client.delete(f"/v2/{repo_name}/manifests/{drop.digest}")
    assert resp.status == 202

    dry = await run_gc(wharf, dry_run=True)
    assert dry.removed == 3  # drop's manifest, config and layer
    assert all(stored(wharf, d) for d in (drop.digest, *drop.blobs))

    report = await run_gc(wharf)
    assert report.removed == 3
    assert report.freed_bytes == len(drop.manifest) + sum(len(b) for b in drop.blobs.values())
    assert not any(stored(wharf, d) for d in (drop.digest, *drop.blobs))
    for image, name, tag in ((keep, repo_name, "keep"), (index, repo_name + "-idx", "multi")):
        resp = await wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        assert await resp.read() == image.manifest
        for digest, data in image.blobs.items():
            assert await (await wharf.client.get(f"/v2/{name}/blobs/{digest}")).read() == data
    # an untagged manifest is still in its repository: kept
    assert all(stored(wharf, d) for d in (untagged.digest, *untagged.blobs))
    # a deleted blob link is gone for good: pushing the image again uploads it again
    await push_image(wharf.url, repo_name, drop, tag="drop")
    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/drop", headers={"Accept": MANIFEST_ACCEPT})
    assert await resp.read() == drop.manifest


async def test_blobs_of_a_push_in_progress_survive_gc(make_wharf, repo_name):
    """Layers uploaded, manifest not yet sent: within the grace period gc keeps them."""
    wharf = await make_wharf(gc={"interval_seconds": 0})
    image = make_image("gc-in-progress", (4000,))
    for data in image.blobs.values():
        location = (await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/")).headers["Location"]
        resp = await wharf.client.put(f"{location}?digest={sha256_digest(data)}", data=data, headers=OCTET)
        assert resp.status == 201
    report = await run_gc(wharf, grace=3600)
    assert report.removed == 0 and report.kept_recent == 2
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/v1", data=image.manifest,
                                  headers={"Content-Type": image.media_type})
    assert resp.status == 201
    # without grace, an orphan goes; a manifest push then reports the missing blob, never a broken image
    orphan = b"orphan layer"
    location = (await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/")).headers["Location"]
    await wharf.client.put(f"{location}?digest={sha256_digest(orphan)}", data=orphan, headers=OCTET)
    report = await run_gc(wharf, grace=0)
    assert report.removed == 1
    assert not stored(wharf, sha256_digest(orphan))
    assert (await wharf.client.head(f"/v2/{repo_name}/blobs/{sha256_digest(orphan)}")).status == 404
    assert all(stored(wharf, d) for d in image.blobs)


async def test_manifest_push_renews_the_grace_of_old_blobs(make_wharf, repo_name):
    """An old orphan blob referenced by a new manifest is live from the moment the manifest commits."""
    wharf = await make_wharf(gc={"interval_seconds": 0})
    image = make_image("gc-renew", (1500,))
    for data in image.blobs.values():
        location = (await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/")).headers["Location"]
        await wharf.client.put(f"{location}?digest={sha256_digest(data)}", data=data, headers=OCTET)
    meta = wharf.app[META]
    for digest in image.blobs:  # pretend they were linked long ago
        meta._set(f"pushed:{digest}", 1.0)
        meta._disk.set(f"pushed:{digest}", 1.0)
    resp = await wharf.client.put(f"/v2/{repo_name}/manifests/v1", data=image.manifest,
                                  headers={"Content-Type": image.media_type})
    assert resp.status == 201
    assert all(meta.pushed_at(d) > 1.0 for d in image.blobs)
    report = await run_gc(wharf, grace=3600)
    assert report.removed == 0


async def test_gc_expires_idle_uploads_but_not_live_ones(make_wharf, repo_name):
    wharf = await make_wharf(limits={"upload_idle_seconds": 60}, gc={"interval_seconds": 0})
    root: Path = wharf.app[CONFIG].storage.root
    idle = (await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/")).headers["Location"]
    live = (await wharf.client.post(f"/v2/{repo_name}/blobs/uploads/")).headers["Location"]
    await wharf.client.patch(idle, data=b"a" * 100, headers=OCTET)
    await wharf.client.patch(live, data=b"b" * 100, headers=OCTET)
    old = os.stat(root / "uploads" / f"{idle.rsplit('/', 1)[1]}.data").st_mtime - 120
    for suffix in ("data", "json"):
        os.utime(root / "uploads" / f"{idle.rsplit('/', 1)[1]}.{suffix}", (old, old))
    report = await run_gc(wharf)
    assert report.uploads_expired == 1
    assert (await wharf.client.get(idle)).status == 404
    resp = await wharf.client.get(live)
    assert resp.status == 204 and resp.headers["Range"] == "0-99"
    assert sorted(os.listdir(root / "uploads")) == sorted(f"{live.rsplit('/', 1)[1]}.{s}" for s in ("data", "json"))


async def test_cached_content_is_left_to_the_budget(make_wharf, fake_upstream, repo_name):
    fake = await fake_upstream()
    image = make_image("gc-cached", (2500,))
    fake.add_image(repo_name, image, tag="1")
    wharf = await make_wharf(fake.url, gc={"interval_seconds": 0})
    name = f"{wharf.upstream_name(fake.url)}/{repo_name}"
    resp = await wharf.client.get(f"/v2/{name}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200
    for digest in image.blobs:
        assert (await (await wharf.client.get(f"/v2/{name}/blobs/{digest}")).read())
    report = await run_gc(wharf)
    assert report.removed == 0
    assert all(stored(wharf, d) for d in (image.digest, *image.blobs))


async def test_gc_while_pushes_run_never_breaks_an_image(make_wharf, repo_name):
    """Pushes and gc passes interleave on one event loop; every pushed image stays whole."""
    wharf = await make_wharf(gc={"interval_seconds": 0})
    images = [make_image(f"gc-race-{i}", (3000, 5000)) for i in range(6)]

    async def gc_loop(stop: asyncio.Event) -> int:
        passes = 0
        while not stop.is_set():
            await run_gc(wharf, grace=5)
            passes += 1
            await asyncio.sleep(0)
        return passes

    stop = asyncio.Event()
    collector = asyncio.ensure_future(gc_loop(stop))
    await asyncio.gather(*(push_image(wharf.url, f"{repo_name}-{i}", image, tag="v")
                           for i, image in enumerate(images)))
    stop.set()
    assert await collector > 0
    await run_gc(wharf, grace=0)  # nothing recent any more: only references keep content now
    for i, image in enumerate(images):
        resp = await wharf.client.get(f"/v2/{repo_name}-{i}/manifests/v", headers={"Accept": MANIFEST_ACCEPT})
        assert await resp.read() == image.manifest
        for digest, data in image.blobs.items():
            assert await (await wharf.client.get(f"/v2/{repo_name}-{i}/blobs/{digest}")).read() == data


async def test_wharf_gc_command(make_wharf, repo_name, tmp_path):
    wharf = await make_wharf(gc={"interval_seconds": 0})
    image = make_image("gc-cli", (1200,))
    await push_image(wharf.url, repo_name, image, tag="x")
    await wharf.client.delete(f"/v2/{repo_name}/manifests/{image.digest}")
    root = wharf.app[CONFIG].storage.root
    config = tmp_path / "gc.yaml"
    settings = {"storage": {"root": str(root)}, "upstreams": [], "default_upstream": None}
    config.write_text(json.dumps(settings))
    command = [sys.executable, "-m", "proxy", "gc", "--config", str(config), "--grace", "0"]
    kept = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["removed"] == 0  # the deleted version may still be restored (30 days)
    config.write_text(json.dumps({**settings, "access": {"retention_days": 0}}))
    dry = subprocess.run(command + ["--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["removed"] == 3
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["removed"] == 3 and report["dry_run"] is False
    assert not any((root / "blobs" / "sha256" / d.split(":")[1]).exists() for d in (image.digest, *image.blobs))
    missing = subprocess.run([sys.executable, "-m", "proxy", "gc", "--config", str(tmp_path / "none.yaml")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2


async def test_background_pass_collects_and_recounts_the_budget(make_wharf, repo_name):
    from proxy.app import BUDGET

    # the push itself is safe; a deleted version is not kept for a restore (retention 0)
    wharf = await make_wharf(gc={"interval_seconds": 0.2, "grace_seconds": 1}, access={"retention_days": 0})
    image = make_image("gc-background", (40_000,))
    await push_image(wharf.url, repo_name, image, tag="x")
    budget = wharf.app[BUDGET]
    pushed = budget.pushed_bytes
    assert pushed >= len(image.manifest) + sum(len(b) for b in image.blobs.values())
    await wharf.client.delete(f"/v2/{repo_name}/manifests/{image.digest}")
    expected = pushed - len(image.manifest) - sum(len(b) for b in image.blobs.values())

    def collected() -> bool:
        return not any(stored(wharf, d) for d in (image.digest, *image.blobs)) and budget.pushed_bytes == expected

    # each part leaves once its own grace has run out (it was pushed a little later than the one before),
    # and the budget is recounted after the pass that removed it
    deadline = asyncio.get_running_loop().time() + 8
    while not collected() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert not any(stored(wharf, d) for d in (image.digest, *image.blobs))
    assert budget.pushed_bytes == expected
