"""Blob fills: one upstream download shared by every concurrent client, streamed as it grows,
verified before commit, and never served half-written."""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import pytest

from proxy.app import BLOBS
from proxy.http.keys import REGISTRY
from proxy.oci.digest import Digest
from support.fake_upstream import Fault

REPO = "team/app"


def _blob(size: int, seed: bytes = b"x") -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def _stored(wharf, digest: str) -> bool:
    algorithm, hex_part = digest.split(":")
    return os.path.exists(wharf.app[BLOBS].blob_dir / algorithm / hex_part)


def _temp_files(wharf) -> list[str]:
    return os.listdir(wharf.app[BLOBS].tmp_dir)


async def _setup(fake_upstream, make_wharf, size=1_000_000, **fault):
    fake = await fake_upstream()
    data = _blob(size)
    digest = fake.add_blob(REPO, data)
    if fault:
        fake.fault(fake.blob_path(REPO, digest), Fault(**fault))
    wharf = await make_wharf(fake.url)
    path = f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/blobs/{digest}"
    return fake, wharf, data, digest, path


async def test_concurrent_clients_share_one_upstream_download(fake_upstream, make_wharf):
    fake, wharf, data, digest, path = await _setup(fake_upstream, make_wharf, bytes_per_second=2_000_000)

    async def pull() -> bytes:
        async with aiohttp.ClientSession() as session:
            async with session.get(wharf.url + path) as resp:
                assert resp.status == 200
                assert resp.headers["Docker-Content-Digest"] == digest
                return await resp.read()

    bodies = await asyncio.gather(*(pull() for _ in range(8)))
    assert all(body == data for body in bodies)
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 1
    assert _stored(wharf, digest)

    # and the next pull is a cache hit: upstream sees nothing more
    resp = await wharf.client.get(path)
    assert await resp.read() == data
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 1


async def test_first_bytes_arrive_while_the_fill_is_still_running(fake_upstream, make_wharf):
    fake, wharf, data, digest, path = await _setup(fake_upstream, make_wharf, size=600_000,
                                                   bytes_per_second=200_000)
    fills = wharf.app[REGISTRY].fills
    async with aiohttp.ClientSession() as session:
        async with session.get(wharf.url + path) as resp:
            first = await resp.content.readexactly(1000)
            assert fills.get(Digest.parse(digest)) is not None, \
                "the client got bytes only after the fill had finished"
            rest = await resp.read()
    assert first + rest == data


async def test_client_hanging_up_does_not_abort_the_fill(fake_upstream, make_wharf):
    fake, wharf, data, digest, path = await _setup(fake_upstream, make_wharf, size=400_000,
                                                   bytes_per_second=400_000)
    async with aiohttp.ClientSession() as session:
        resp = await session.get(wharf.url + path)
        await resp.content.readexactly(10_000)
        resp.close()  # hang up mid-transfer
    for _ in range(100):
        if _stored(wharf, digest):
            break
        await asyncio.sleep(0.05)
    assert _stored(wharf, digest), "the fill died with the client that started it"
    resp = await wharf.client.get(path)
    assert await resp.read() == data
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 1


async def _pull_is_aborted_and_nothing_kept(wharf, digest: str, path: str) -> None:
    """The client's transfer breaks (never a clean complete body) and no file is left behind."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(wharf.url + path) as resp:
                await resp.read()
    for _ in range(40):  # a failed leader's note for the other processes goes within a second
        await asyncio.sleep(0.05)
        if not _temp_files(wharf):
            break
    assert not _stored(wharf, digest)
    assert _temp_files(wharf) == []


async def test_truncated_upstream_body_aborts_the_client_and_stores_nothing(fake_upstream, make_wharf):
    fake, wharf, data, digest, path = await _setup(fake_upstream, make_wharf, size=300_000,
                                                   truncate_after=100_000, times=1)
    await _pull_is_aborted_and_nothing_kept(wharf, digest, path)
    # the fault is gone: the next pull fetches again and completes
    resp = await wharf.client.get(path)
    assert resp.status == 200 and await resp.read() == data
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 2


async def test_wrong_content_from_upstream_is_never_served_as_complete(fake_upstream, make_wharf):
    fake, wharf, data, digest, path = await _setup(fake_upstream, make_wharf, size=200_000,
                                                   content=_blob(200_000, b"evil"), times=1)
    await _pull_is_aborted_and_nothing_kept(wharf, digest, path)
    from proxy.app import META
    # a fill that failed grants nothing: had its anonymous fetch left the digest marked public, the
    # real bytes cached later with a client's credential would be served to anyone
    assert wharf.app[META].visibility(digest, fresh=True).repos == set()
    resp = await wharf.client.get(path)
    assert await resp.read() == data


async def test_range_on_cached_blob_and_on_a_blob_still_filling(fake_upstream, make_wharf):
    fake, wharf, data, digest, path = await _setup(fake_upstream, make_wharf, size=500_000,
                                                   bytes_per_second=500_000)
    # while filling
    resp = await wharf.client.get(path, headers={"Range": "bytes=1000-1999"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert await resp.read() == data[1000:2000]
    for _ in range(100):
        if _stored(wharf, digest):
            break
        await asyncio.sleep(0.05)
    # from the store
    resp = await wharf.client.get(path, headers={"Range": "bytes=-100"})
    assert resp.status == 206
    assert await resp.read() == data[-100:]
    resp = await wharf.client.get(path, headers={"Range": f"bytes={len(data) + 10}-"})
    assert resp.status == 416
    assert (await resp.json())["errors"][0]["code"] == "RANGE_INVALID"
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 1


async def test_head_blob_reports_size_without_downloading(fake_upstream, make_wharf):
    fake, wharf, data, digest, path = await _setup(fake_upstream, make_wharf, size=50_000)
    resp = await wharf.client.head(path)
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) == len(data)
    assert resp.headers["Docker-Content-Digest"] == digest
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 0


async def test_sha512_blobs_are_verified_and_served(fake_upstream, make_wharf):
    fake = await fake_upstream()
    data = _blob(70_000, b"sha512")
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    fake.blobs.setdefault(REPO, {})[digest] = data
    wharf = await make_wharf(fake.url)
    path = f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/blobs/{digest}"
    resp = await wharf.client.get(path)
    assert resp.status == 200 and await resp.read() == data
    assert _stored(wharf, digest)


async def test_unknown_blob_is_blob_unknown_and_remembered_briefly(fake_upstream, make_wharf):
    fake = await fake_upstream()
    wharf = await make_wharf(fake.url)
    digest = "sha256:" + "0" * 64
    path = f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/blobs/{digest}"
    for _ in range(3):
        resp = await wharf.client.get(path)
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 1


async def test_malformed_digest_is_digest_invalid(fake_upstream, make_wharf):
    fake = await fake_upstream()
    wharf = await make_wharf(fake.url)
    resp = await wharf.client.get(f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/blobs/sha256:nothex")
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"
    assert fake.count() == 0


async def test_a_fill_writes_whole_units_and_its_readers_see_every_byte(tmp_path):
    """Network chunks come in odd sizes; the file grows in 64 KiB units (large page-cache folios,
    faster sendfile later), and what the writer holds back is written by commit."""
    from proxy.storage.blobs import BlobStore

    store = BlobStore(tmp_path)
    data = _blob(1_000_000)
    writer = store.new_writer()
    sizes_seen = set()
    for start in range(0, len(data), 7_919):  # a prime: no chunk boundary is ever aligned
        writer.write(data[start:start + 7_919])
        sizes_seen.add(os.path.getsize(writer.temp_path))
        assert writer.written == os.path.getsize(writer.temp_path)
    assert all(size % (64 * 1024) == 0 for size in sizes_seen)
    path = writer.commit(Digest.parse("sha256:" + hashlib.sha256(data).hexdigest()), len(data))
    assert path.read_bytes() == data


async def test_a_trickling_fill_reaches_its_readers_without_waiting_for_a_unit(tmp_path):
    from proxy.storage.blobs import BlobStore

    writer = BlobStore(tmp_path).new_writer()
    writer.write(b"a" * 100)
    await asyncio.sleep(0.06)
    writer.write(b"b" * 100)
    assert os.path.getsize(writer.temp_path) == writer.written == 200
    writer.abort()
    assert not writer.temp_path.exists()


async def test_a_fill_whose_source_broke_goes_on_only_from_a_source_that_repeats_its_bytes(tmp_path):
    """The next source of a fill (after a replica's stream broke) is read from its first byte and
    must repeat what the file holds before the file grows again; one that differs fails the fill."""
    from proxy.registry.blobcache import _Landing
    from proxy.storage.blobs import BlobStore
    from proxy.storage.space import StoreSpace
    from proxy.metrics import Metrics
    from proxy.errors import DigestInvalid, SizeInvalid

    data = _blob(300_000, b"resume")
    store = BlobStore(tmp_path / "store", StoreSpace(tmp_path / "store", 0, Metrics()))

    async def source(body: bytes, piece: int = 70_000):
        for offset in range(0, len(body), piece):
            yield body[offset:offset + piece]

    async def landed(first: bytes, second: bytes) -> bytes:
        landing = _Landing(store.tmp_dir / "fill.part", store.tmp_dir / "fill.size")
        landing.writer = store.new_writer(temp_path=landing.temp_path, hash_inline=False)
        try:
            for chunk in [first]:
                landing.writer.write(chunk)
            out = b""
            async for chunk in landing.resumed(source(second)):
                out += bytes(chunk)
            return out
        finally:
            landing.abort()

    assert await landed(data[:123_456], data) == data[123_456:]
    with pytest.raises(DigestInvalid):
        await landed(data[:123_456], data[:100_000] + b"\0" + data[100_001:])
    with pytest.raises(SizeInvalid):
        await landed(data[:123_456], data[:100_000])
