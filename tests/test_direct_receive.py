"""Blob bodies read straight from upstream's connection (``fast_paths.direct_receive``), and the same
pulls through aiohttp's own reading: the bytes, the upstream byte count and the failure rules
(a cut body, a body that stalls) are the same both ways."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from proxy.app import BLOBS
from proxy.http.keys import METRICS
from support.fake_upstream import Fault

REPO = "team/big"
SIZE = 3 * 1024 * 1024 + 123  # past the size below which aiohttp keeps the body (and the connection)
BOTH = pytest.mark.parametrize("direct", [True, False], ids=["direct", "aiohttp"])


async def _wharf(fake, make_wharf, direct: bool, **upstream_options):
    return await make_wharf(fake.url, upstream_options=upstream_options or None,
                            fast_paths={"replay": True, "hot_manifests": True, "sendfile": True,
                                        "direct_receive": direct})


def _stored(wharf, digest: str) -> bool:
    algorithm, hex_part = digest.split(":")
    return os.path.exists(wharf.app[BLOBS].blob_dir / algorithm / hex_part)


def _upstream_bytes(wharf) -> float:
    return sum(sample.value for metric in wharf.app[METRICS].registry.collect()
               if metric.name == "wharf_upstream_bytes" for sample in metric.samples
               if sample.name.endswith("_total"))


@BOTH
async def test_a_big_blob_streams_to_every_client_whole_and_is_counted_once(fake_upstream, make_wharf, direct):
    fake = await fake_upstream()
    data = os.urandom(SIZE)
    digest = fake.add_blob(REPO, data)
    fake.fault(fake.blob_path(REPO, digest), Fault(bytes_per_second=8_000_000, methods=("GET",)))
    wharf = await _wharf(fake, make_wharf, direct)
    path = f"{wharf.url}/v2/{wharf.upstream_name(fake.url)}/{REPO}/blobs/{digest}"

    async def pull() -> bytes:
        async with aiohttp.ClientSession() as session:
            async with session.get(path) as resp:
                assert resp.status == 200 and resp.content_length == SIZE
                return await resp.read()

    bodies = await asyncio.gather(*(pull() for _ in range(4)))
    assert all(body == data for body in bodies)
    assert _stored(wharf, digest)
    assert _upstream_bytes(wharf) == SIZE
    assert fake.count("GET", fake.blob_path(REPO, digest)) == 1


async def _aborted(wharf, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(path) as resp:
                await resp.read()


@BOTH
async def test_a_body_cut_short_aborts_the_client_and_keeps_nothing(fake_upstream, make_wharf, direct):
    fake = await fake_upstream()
    data = os.urandom(SIZE)
    digest = fake.add_blob(REPO, data)
    fake.fault(fake.blob_path(REPO, digest), Fault(truncate_after=2 * 1024 * 1024, methods=("GET",), times=1))
    wharf = await _wharf(fake, make_wharf, direct)
    path = f"{wharf.url}/v2/{wharf.upstream_name(fake.url)}/{REPO}/blobs/{digest}"
    await _aborted(wharf, path)
    assert not _stored(wharf, digest)
    async with aiohttp.ClientSession() as session:
        async with session.get(path) as resp:
            assert resp.status == 200 and await resp.read() == data


@BOTH
async def test_a_body_that_stalls_past_read_timeout_aborts_the_client_and_keeps_nothing(
        fake_upstream, make_wharf, direct):
    fake = await fake_upstream()
    data = os.urandom(SIZE)
    digest = fake.add_blob(REPO, data)
    fake.fault(fake.blob_path(REPO, digest), Fault(stall_after=1_500_000, methods=("GET",), times=1))
    wharf = await _wharf(fake, make_wharf, direct, read_timeout=0.5)
    path = f"{wharf.url}/v2/{wharf.upstream_name(fake.url)}/{REPO}/blobs/{digest}"
    await asyncio.wait_for(_aborted(wharf, path), 20)
    assert not _stored(wharf, digest)
    async with aiohttp.ClientSession() as session:
        async with session.get(path) as resp:
            assert resp.status == 200 and await resp.read() == data
