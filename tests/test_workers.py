"""Several worker processes on one store: still one upstream download per blob and one HEAD per
tag; and the real `wharf serve` command with two workers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import yaml

from proxy.app import BUDGET
from support.fake_upstream import Fault
from support.images import MANIFEST_ACCEPT, make_image, push_image

REPO = "team/app"


async def _two_workers(make_wharf, upstream_url, root, **options):
    """Two apps on one storage root, configured as workers of one server (diskcache shared)."""
    common = {"storage": {"root": str(root)}, "workers": 2, **options}
    return await make_wharf(upstream_url, **common), await make_wharf(upstream_url, **common)


async def test_workers_share_one_blob_download(fake_upstream, make_wharf, tmp_path):
    fake = await fake_upstream()
    data = os.urandom(400_000)
    digest = fake.add_blob(REPO, data)
    fake.fault(fake.blob_path(REPO, digest), Fault(bytes_per_second=800_000))
    first, second = await _two_workers(make_wharf, fake.url, tmp_path / "store")
    path = f"/v2/{first.upstream_name(fake.url)}/{REPO}/blobs/{digest}"

    async def pull(wharf) -> bytes:
        async with aiohttp.ClientSession() as session:
            async with session.get(wharf.url + path) as resp:
                assert resp.status == 200
                return await resp.read()

    bodies = await asyncio.gather(*(pull(w) for w in (first, second) * 3))
    assert all(hashlib.sha256(b).hexdigest() == digest.split(":")[1] for b in bodies)
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 1


async def _two_workers_on_a_tag(fake_upstream, make_wharf, tmp_path, seed: str):
    """A fake upstream with ``REPO:1.0`` (TTL 0.3 s) behind two workers; (fake, image, workers, path)."""
    fake = await fake_upstream()
    image = make_image(seed, (100,))
    fake.add_image(REPO, image, tag="1.0")
    workers = await _two_workers(make_wharf, fake.url, tmp_path / "store", upstream_options={"tag_ttl": 0.3})
    return fake, image, workers, f"/v2/{workers[0].upstream_name(fake.url)}/{REPO}/manifests/1.0"


async def test_workers_revalidate_a_tag_once(fake_upstream, make_wharf, tmp_path):
    fake, image, (first, second), path = await _two_workers_on_a_tag(fake_upstream, make_wharf, tmp_path, "workers")
    await first.client.get(path)
    await second.client.get(path)
    assert fake.count("GET", fake.manifest_path(REPO, "1.0")) == 1, "the second worker fetched again"
    await asyncio.sleep(0.4)
    fake.fault(fake.manifest_path(REPO, "1.0"), Fault(bytes_per_second=1_000, methods=("HEAD",)))
    results = await asyncio.gather(*(w.client.get(path) for w in (first, second) * 4))
    assert all(r.status == 200 for r in results)
    assert fake.count("HEAD", fake.manifest_path(REPO, "1.0")) == 1
    assert fake.count("GET", fake.manifest_path(REPO, "1.0")) == 1


async def test_workers_keep_one_size_budget(fake_upstream, make_wharf, tmp_path):
    fake = await fake_upstream()
    digests = [fake.add_blob(REPO, os.urandom(100_000)) for _ in range(8)]
    root = tmp_path / "store"
    first, second = await _two_workers(make_wharf, fake.url, root,
                                       storage={"root": str(root), "max_cache_bytes": 350_000})
    name = f"{first.upstream_name(fake.url)}/{REPO}"
    for i, digest in enumerate(digests):
        worker = (first, second)[i % 2]
        resp = await worker.client.get(f"/v2/{name}/blobs/{digest}")
        assert resp.status == 200 and len(await resp.read()) == 100_000
        for budget in (first.app[BUDGET], second.app[BUDGET]):  # evictions run in a thread after the commit
            assert await asyncio.to_thread(budget.wait_idle, 10)
        stored = sum(f.stat().st_size for f in (root / "blobs").rglob("*") if f.is_file())
        assert stored <= 350_000, f"after {i + 1} pulls the two workers keep {stored} bytes"
    metrics = [await (await w.client.get("/metrics")).text() for w in (first, second)]
    gauges = [line for text in metrics for line in text.splitlines()
              if line.startswith('wharf_store_bytes{kind="cached"}')]
    assert len(set(gauges)) == 1, "both workers report the store's one total"


async def test_metrics_of_any_worker_count_every_worker(registry_upstream, repo_name, make_wharf, tmp_path):
    image = make_image("metrics-workers", (100,))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    first, second = await _two_workers(make_wharf, registry_upstream, tmp_path / "store")
    path = f"/v2/{first.upstream_name(registry_upstream)}/{repo_name}/manifests/v1"
    for worker, times in ((first, 3), (second, 2)):
        for _ in range(times):
            assert (await worker.client.get(path, headers={"Accept": MANIFEST_ACCEPT})).status == 200
    await asyncio.sleep(1.2)  # workers publish their samples every second
    for worker in (first, second):
        text = await (await worker.client.get("/metrics")).text()
        assert 'wharf_http_requests_total{method="GET",route="manifest",status="200"} 5.0' in text
        assert 'wharf_cache_requests_total{kind="tag",result="miss"} 1.0' in text  # one download for both
        assert 'wharf_cache_requests_total{kind="tag",result="hit"} 4.0' in text
        assert 'wharf_http_request_duration_seconds_count{route="manifest"} 5.0' in text


async def test_a_tag_another_worker_just_revalidated_is_not_revalidated_again(fake_upstream, make_wharf,
                                                                               tmp_path):
    from proxy.http.keys import SHARED

    fake, image, (first, second), path = await _two_workers_on_a_tag(fake_upstream, make_wharf, tmp_path, "recheck")
    assert (await first.client.get(path)).status == 200
    await asyncio.sleep(0.4)
    shared = first.app[SHARED]
    take_lock = shared.add

    async def lock_after_the_other_worker_revalidated(key, value, ttl):
        if key.startswith("lock:"):  # the other worker wins the race: it looks, locks, HEADs, unlocks
            assert (await second.client.get(path)).status == 200
        return await take_lock(key, value, ttl)

    shared.add = lock_after_the_other_worker_revalidated
    resp = await first.client.get(path)
    assert resp.status == 200 and await resp.read() == image.manifest
    assert fake.count("HEAD", fake.manifest_path(REPO, "1.0")) == 1


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_wharf_serve_command_with_two_workers(registry_upstream, repo_name, tmp_path):
    image = make_image("serve", (3000, 3_000_000))  # the big layer goes out by sendfile under uvloop
    await push_image(registry_upstream, repo_name, image, tag="v1")
    upstream = registry_upstream.split("://", 1)[1]
    port = _free_port()
    config = tmp_path / "wharf.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}", "workers": 2, "storage": {"root": str(tmp_path / "data")},
        "upstreams": [{"name": upstream, "url": registry_upstream}], "default_upstream": upstream}))
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(base + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "wharf serve did not become ready"
                await asyncio.sleep(0.2)
            for _ in range(4):  # prefix-less name: the default upstream
                async with session.get(f"{base}/v2/{repo_name}/manifests/v1",
                                       headers={"Accept": MANIFEST_ACCEPT}) as resp:
                    assert resp.status == 200 and await resp.read() == image.manifest
                for layer in image.layers:
                    async with session.get(f"{base}/v2/{repo_name}/blobs/{layer.digest}") as resp:
                        assert await resp.read() == layer.data
            big = image.layers[1]
            async with session.get(f"{base}/v2/{repo_name}/blobs/{big.digest}",
                                   headers={"Range": "bytes=1000000-"}) as resp:
                assert resp.status == 206 and await resp.read() == big.data[1000000:]
            # a worker that dies is replaced, and the server keeps answering meanwhile
            workers = _children(proc.pid)
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGKILL)
            deadline = time.monotonic() + 20
            while len(set(_children(proc.pid)) - {workers[0]}) < 2:
                assert time.monotonic() < deadline, "the dead worker was not replaced"
                await asyncio.sleep(0.1)
            for _ in range(4):
                async with session.get(f"{base}/v2/{repo_name}/manifests/v1",
                                       headers={"Accept": MANIFEST_ACCEPT}) as resp:
                    assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "2 worker(s)" in output


async def test_a_429_keeps_every_worker_away_from_upstream(fake_upstream, make_wharf, tmp_path):
    from support.fake_upstream import ANY_PATH, rate_limited

    fake = await fake_upstream()
    image = make_image("quota", (100,))
    fake.add_image(REPO, image, tag="1.0")
    first, second = await _two_workers(make_wharf, fake.url, tmp_path / "store")
    path = f"/v2/{first.upstream_name(fake.url)}/{REPO}/manifests/1.0"
    fake.fault(ANY_PATH, rate_limited(retry_after=60))
    assert (await first.client.get(path)).status == 429
    fake.clear_faults()
    before = fake.count()
    resp = await second.client.get(path)
    assert resp.status == 429, "the other worker asked upstream during Retry-After"
    assert fake.count() == before


async def test_a_fill_that_fails_verification_is_not_taken_over_by_another_worker(fake_upstream, make_wharf,
                                                                                  tmp_path):
    """Upstream sends other bytes than the digest names: the leading worker's fill fails, and the other
    worker's readers fail with it (never a clean body), instead of downloading it once more."""
    fake = await fake_upstream()
    data = os.urandom(300_000)
    digest = fake.add_blob(REPO, data)
    fake.fault(fake.blob_path(REPO, digest), Fault(content=os.urandom(len(data)), bytes_per_second=600_000,
                                                   methods=("GET",)))
    first, second = await _two_workers(make_wharf, fake.url, tmp_path / "store")
    path = f"/v2/{first.upstream_name(fake.url)}/{REPO}/blobs/{digest}"

    async def pull(wharf) -> bytes | None:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.get(wharf.url + path) as resp:
                    return await resp.read() if resp.status == 200 else None
            except aiohttp.ClientPayloadError:
                return None

    leader = asyncio.ensure_future(pull(first))
    await asyncio.sleep(0.2)  # the first worker leads; the second follows its file
    bodies = await asyncio.gather(leader, pull(second), pull(second))
    assert bodies == [None, None, None]  # nobody got a body that passes for the blob
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 1
    assert not (tmp_path / "store" / "blobs" / "sha256" / digest.split(":")[1]).exists()
