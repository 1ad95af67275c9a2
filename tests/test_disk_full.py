"""A full disk: new content is refused with a clear 507, /readyz and /metrics say so, no partial
files stay behind, and what is stored is still served.

The store is a real 4 MiB tmpfs (the tests run as root, as scripts/test.sh does), filled with a
file until the filesystem answers ENOSPC.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from support.images import OCI_MANIFEST, make_image, sha256_digest

REPO = "team/app"
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 4 MiB tmpfs, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"these tests need root to mount a tmpfs: {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a file until the filesystem is full (or ``leave`` bytes are free); returns it."""
    filler = disk / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb", buffering=0) as f:
        block = b"\0" * 64 * 1024
        while True:
            stat = os.statvfs(disk)
            free = stat.f_bavail * stat.f_frsize
            if leave and free - len(block) < leave:
                block = block[:max(free - leave, 0)]
                if not block:
                    break
            try:
                f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def temp_files(root: Path) -> set[str]:
    """What the temporary and upload areas hold."""
    return {f"{area}/{entry.name}" for area in ("tmp", "uploads") for entry in os.scandir(root / area)}


async def error_of(resp) -> dict:
    assert resp.status == 507, await resp.text()
    return (await resp.json())["errors"][0]


async def start_upload(wharf, repo: str) -> str:
    resp = await wharf.client.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, await resp.text()
    return resp.headers["Location"]


async def push_blob(wharf, repo: str, data: bytes) -> str:
    location = await start_upload(wharf, repo)
    digest = sha256_digest(data)
    resp = await wharf.client.put(f"{location}?digest={digest}", data=data, headers=OCTET)
    assert resp.status == 201, await resp.text()
    return digest


async def test_a_full_disk_refuses_new_content_and_serves_what_is_stored(make_wharf, fake_upstream, small_disk):
    fake = await fake_upstream()
    cached = os.urandom(100_000)
    cached_digest = fake.add_blob(REPO, cached)
    cold_digest = fake.add_blob(REPO, os.urandom(200_000))
    wharf = await make_wharf(fake.url, storage={"root": str(small_disk), "min_free_bytes": 256 * 1024})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    assert await (await wharf.client.get(f"/v2/{name}/blobs/{cached_digest}")).read() == cached
    image = make_image("disk-full", (1000,), oci=True)
    for data in image.blobs.values():
        await push_blob(wharf, "team/pushed", data)
    session = await start_upload(wharf, "team/pushed")
    assert (await wharf.client.get("/readyz")).status == 200
    before = temp_files(small_disk)

    filler = fill(small_disk)
    # a new upload, a chunk into an existing one, a monolithic push, a manifest, a cold fill
    error = await error_of(await wharf.client.post("/v2/team/pushed/blobs/uploads/"))
    assert error["code"] == "UNAVAILABLE" and "storage is full" in error["message"]
    await error_of(await wharf.client.patch(session, data=b"x" * 1000, headers=OCTET))
    data = os.urandom(5000)
    await error_of(await wharf.client.post(f"/v2/team/pushed/blobs/uploads/?digest={sha256_digest(data)}",
                                           data=data, headers=OCTET))
    await error_of(await wharf.client.put("/v2/team/pushed/manifests/v1", data=image.manifest,
                                          headers={"Content-Type": OCI_MANIFEST}))
    await error_of(await wharf.client.get(f"/v2/{name}/blobs/{cold_digest}"))
    assert temp_files(small_disk) == before, "a refused write left files behind"

    resp = await wharf.client.get("/readyz")
    assert resp.status == 503
    assert any("storage is full" in problem for problem in (await resp.json())["problems"])
    metrics = await (await wharf.client.get("/metrics")).text()
    assert "wharf_store_full 1.0" in metrics
    refusals = [line for line in metrics.splitlines() if line.startswith("wharf_store_full_refusals_total ")]
    assert refusals and float(refusals[0].split()[1]) >= 4
    # what is stored is still served
    resp = await wharf.client.get(f"/v2/{name}/blobs/{cached_digest}")
    assert resp.status == 200 and await resp.read() == cached

    filler.unlink()  # room again: ready, and the same pushes work
    assert (await wharf.client.get("/readyz")).status == 200
    resp = await wharf.client.patch(session, data=b"x" * 1000, headers=OCTET)
    assert resp.status == 202
    resp = await wharf.client.put("/v2/team/pushed/manifests/v1", data=image.manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    assert "wharf_store_full 0.0" in await (await wharf.client.get("/metrics")).text()


async def test_writes_that_meet_enospc_answer_507_and_remove_their_files(make_wharf, fake_upstream, small_disk):
    """With no reserve, the write itself meets ENOSPC: a chunk that does not fit, a cold fill."""
    fake = await fake_upstream()
    cold = os.urandom(600_000)
    cold_digest = fake.add_blob(REPO, cold)
    wharf = await make_wharf(fake.url, storage={"root": str(small_disk), "min_free_bytes": 0})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    session = await start_upload(wharf, "team/pushed")
    before = temp_files(small_disk)
    fill(small_disk, leave=300_000)

    # a chunk without a declared length (chunked, as dockerd sends it) that outgrows the disk
    async def body():
        for _ in range(10):
            yield os.urandom(64 * 1024)
    resp = await wharf.client.patch(session, data=body(), headers=OCTET)
    error = await error_of(resp)
    assert "storage is full" in error["message"]
    assert temp_files(small_disk) == before - {f"uploads/{Path(session).name}.data",
                                               f"uploads/{Path(session).name}.json"}, \
        "the session whose chunk met ENOSPC keeps its data"
    assert (await wharf.client.get(session)).status == 404  # the session is gone with its data
    # a cold fill bigger than the room left: refused before its first byte
    await error_of(await wharf.client.get(f"/v2/{name}/blobs/{cold_digest}"))
    assert not any(entry.startswith("tmp/fill-") and entry.endswith(".part") for entry in temp_files(small_disk))
    assert (await wharf.client.get("/readyz")).status == 503


async def test_a_stale_tag_is_still_served_when_the_disk_is_full(make_wharf, fake_upstream, small_disk):
    import asyncio

    fake = await fake_upstream()
    image = make_image("stale-on-full", (1000,))
    fake.add_image(REPO, image, tag="v1")
    wharf = await make_wharf(fake.url, storage={"root": str(small_disk), "min_free_bytes": 256 * 1024},
                             upstream_options={"tag_ttl": 0.2})
    path = f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/manifests/v1"
    assert (await wharf.client.get(path)).status == 200
    await asyncio.sleep(0.3)  # stale now: the next pull revalidates, which writes
    filler = fill(small_disk)
    try:
        for _ in range(2):
            resp = await wharf.client.get(path)
            assert resp.status == 200, await resp.text()
            assert await resp.read() == image.manifest
    finally:
        filler.unlink()
