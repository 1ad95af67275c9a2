"""The test support pieces work, against each other and against real servers."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from support.fake_upstream import Fault, rate_limited
from support.images import (DOCKER_MANIFEST_LIST, MANIFEST_ACCEPT, OCI_INDEX, Credentials,
                            PushError, basic_auth_header, make_image, make_index, push_image,
                            sha256_digest)

KIB = 1024


async def get(url: str, **kwargs) -> tuple[int, dict, bytes]:
    """GET ``url``; returns status, headers and the whole body."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url, **kwargs) as resp:
            return resp.status, dict(resp.headers), await resp.read()


# --- images ---------------------------------------------------------------------------------

def test_images_are_deterministic_and_valid() -> None:
    first, second = make_image("det", (KIB, 8 * KIB)), make_image("det", (KIB, 8 * KIB))
    assert first == second
    assert make_image("other", (KIB, 8 * KIB)).digest != first.digest
    assert first.digest == sha256_digest(first.manifest)
    layer = first.layers[1]
    assert layer.size > 8 * KIB  # random bytes do not compress
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.data))) as tar:
        (member,) = tar.getmembers()
        assert member.size == 8 * KIB and member.mtime > 0
    config = json.loads(first.config.data)
    assert len(config["rootfs"]["diff_ids"]) == 2


# --- the real docker-registry ---------------------------------------------------------------

async def assert_served(base_url: str, repo: str, reference: str, data: bytes, media_type: str,
                        auth: Credentials | None = None) -> None:
    status, headers, body = await get(f"{base_url}/v2/{repo}/manifests/{reference}",
                                      headers={"Accept": MANIFEST_ACCEPT, **basic_auth_header(auth)})
    assert status == 200
    assert body == data
    assert headers["Content-Type"] == media_type
    assert headers["Docker-Content-Digest"] == sha256_digest(data)


async def test_push_image_round_trips_byte_exact(registry_upstream: str, repo_name: str) -> None:
    image = make_image("round-trip", (KIB, 64 * KIB, 1024 * KIB))
    await push_image(registry_upstream, repo_name, image, "v1")
    await assert_served(registry_upstream, repo_name, "v1", image.manifest, image.media_type)
    await assert_served(registry_upstream, repo_name, image.digest, image.manifest, image.media_type)
    for digest, data in image.blobs.items():
        status, headers, body = await get(f"{registry_upstream}/v2/{repo_name}/blobs/{digest}")
        assert (status, body, headers["Docker-Content-Digest"]) == (200, data, digest)


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-list"])
async def test_push_index_round_trips_byte_exact(registry_upstream: str, repo_name: str,
                                                 oci: bool) -> None:
    index = make_index("multi", (2 * KIB, 16 * KIB), oci=oci)
    assert index.media_type == (OCI_INDEX if oci else DOCKER_MANIFEST_LIST)
    assert [i.architecture for i in index.images] == ["amd64", "arm64"]
    await push_image(registry_upstream, repo_name, index, "multi")
    await assert_served(registry_upstream, repo_name, "multi", index.manifest, index.media_type)
    for image in index.images:
        await assert_served(registry_upstream, repo_name, image.digest, image.manifest,
                            image.media_type)
    status, _, body = await get(f"{registry_upstream}/v2/{repo_name}/tags/list")
    assert status == 200 and json.loads(body)["tags"] == ["multi"]


async def test_htpasswd_registry_requires_the_credentials(auth_registry_upstream, repo_name) -> None:
    registry = auth_registry_upstream
    status, headers, _ = await get(f"{registry.url}/v2/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert (await get(f"{registry.url}/v2/", headers=registry.headers))[0] == 200
    bad = basic_auth_header((registry.username, "wrong"))
    assert (await get(f"{registry.url}/v2/", headers=bad))[0] == 401

    image = make_image("private", (KIB,))
    with pytest.raises(PushError):
        await push_image(registry.url, repo_name, image, "v1")
    await push_image(registry.url, repo_name, image, "v1", auth=registry.auth)
    await assert_served(registry.url, repo_name, "v1", image.manifest, image.media_type,
                        auth=registry.auth)
    assert (await get(f"{registry.url}/v2/{repo_name}/manifests/v1"))[0] == 401


# --- redis ----------------------------------------------------------------------------------

async def test_redis_answers_ping(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


# --- the fake upstream ----------------------------------------------------------------------

async def test_fake_serves_content_and_counts_requests(fake_upstream) -> None:
    fake = await fake_upstream()
    index = make_index("fake", (KIB,), oci=True)
    fake.add_image("org/img", index, "1.0")
    await assert_served(fake.url, "org/img", "1.0", index.manifest, index.media_type)
    blob_digest, blob = next(iter(index.blobs.items()))
    blob_path = fake.blob_path("org/img", blob_digest)
    for _ in range(2):
        assert (await get(fake.url + blob_path))[2] == blob
    status, headers, body = await get(fake.url + blob_path, headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, blob[10:20], f"bytes 10-19/{len(blob)}")

    assert fake.count("GET", fake.manifest_path("org/img", "1.0")) == 1
    assert fake.count("GET", blob_path) == 3
    assert fake.calls("GET", blob_path)[-1].headers["Range"] == "bytes=10-19"
    assert (await get(fake.url + fake.blob_path("org/img", sha256_digest(b"nope"))))[0] == 404


async def test_fake_429_carries_retry_after_and_quota(fake_upstream) -> None:
    fake = await fake_upstream()
    image = make_image("limited", (KIB,))
    fake.add_image("library/alpine", image, "latest")
    path = fake.manifest_path("library/alpine", "latest")
    fake.fault(path, rate_limited(retry_after=7))
    status, headers, body = await get(fake.url + path)
    assert status == 429 and headers["Retry-After"] == "7"
    assert headers["ratelimit-remaining"].startswith("0")
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"

    fake.clear_faults()
    fake.set_ratelimit(limit=2)
    async with aiohttp.ClientSession() as session:
        async with session.head(fake.url + path) as resp:
            assert resp.headers["ratelimit-remaining"] == "2;w=21600"  # HEAD is free
        for remaining in ("1", "0"):
            async with session.get(fake.url + path) as resp:
                assert resp.status == 200 and resp.headers["ratelimit-remaining"].startswith(remaining)
        async with session.get(fake.url + path) as resp:
            assert resp.status == 429


async def test_fake_status_fault_applies_limited_times(fake_upstream) -> None:
    fake = await fake_upstream()
    fake.add_image("a/b", make_image("flaky", (KIB,)), "t")
    path = fake.manifest_path("a/b", "t")
    fake.fault(path, Fault(status=503, times=1))
    assert (await get(fake.url + path))[0] == 503
    assert (await get(fake.url + path))[0] == 200


async def test_fake_truncates_and_corrupts_bodies(fake_upstream) -> None:
    fake = await fake_upstream()
    image = make_image("cut", (64 * KIB,))
    fake.add_image("a/b", image)
    layer = image.layers[0]
    path = fake.blob_path("a/b", layer.digest)

    fake.fault(path, Fault(truncate_after=1000))
    async with aiohttp.ClientSession() as session:
        async with session.get(fake.url + path) as resp:
            assert resp.headers["Content-Length"] == str(layer.size)
            received = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in resp.content.iter_any():
                    received += chunk
    assert received == layer.data[:1000]

    wrong = bytes(layer.size)
    fake.fault(path, Fault(content=wrong))
    status, headers, body = await get(fake.url + path)
    assert status == 200 and body == wrong and headers["Docker-Content-Digest"] == layer.digest


async def test_fake_slow_body_and_hang(fake_upstream) -> None:
    fake = await fake_upstream()
    image = make_image("slow", (KIB,))
    fake.add_image("a/b", image)
    path = fake.blob_path("a/b", image.layers[0].digest)
    fake.fault(path, Fault(bytes_per_second=image.layers[0].size * 4))
    started = time.monotonic()
    assert (await get(fake.url + path))[2] == image.layers[0].data
    assert time.monotonic() - started >= 0.2

    fake.fault(path, Fault(hang=True))
    with pytest.raises(asyncio.TimeoutError):
        await get(fake.url + path, timeout=aiohttp.ClientTimeout(total=0.3))


async def test_fake_redirects_blobs_to_storage(fake_upstream) -> None:
    fake = await fake_upstream()
    image = make_image("redirect", (KIB,))
    fake.add_image("a/b", image)
    fake.redirect_blobs = True
    digest = image.layers[0].digest
    status, _, body = await get(fake.url + fake.blob_path("a/b", digest))
    assert (status, body) == (200, image.layers[0].data)
    assert fake.count("GET", f"/_storage/{digest}") == 1


async def fetch_token(fake_url: str, challenge: str, auth: Credentials | None) -> tuple[int, dict]:
    """Follow a Bearer challenge the way a client does: GET realm?service=&scope=."""
    params = dict(part.split("=", 1) for part in challenge.removeprefix("Bearer ").split(","))
    params = {k: v.strip('"') for k, v in params.items()}
    assert params["realm"] == f"{fake_url}/token"
    status, _, body = await get(params.pop("realm"), params=params, headers=basic_auth_header(auth))
    return status, json.loads(body)


async def test_fake_bearer_flow_separates_public_and_private(fake_upstream) -> None:
    fake = await fake_upstream()
    fake.require_bearer(users={"alice": "pw"}, private={"org/private"}, token_ttl=60)
    public, private = make_image("pub", (KIB,)), make_image("priv", (KIB,))
    fake.add_image("org/public", public)
    fake.add_image("org/private", private)
    alice = ("alice", "pw")

    for repo, image in (("org/public", public), ("org/private", private)):
        url = fake.url + fake.manifest_path(repo, "latest")
        status, headers, _ = await get(url)
        assert status == 401
        challenge = headers["WWW-Authenticate"]
        assert f'scope="repository:{repo}:pull"' in challenge

        status, anonymous = await fetch_token(fake.url, challenge, None)
        assert status == 200 and anonymous["expires_in"] == 60
        anon_status = (await get(url, headers={"Authorization": f"Bearer {anonymous['token']}"}))[0]
        assert anon_status == (200 if repo == "org/public" else 401)

        status, granted = await fetch_token(fake.url, challenge, alice)
        assert status == 200
        status, _, body = await get(url, headers={"Authorization": f"Bearer {granted['token']}"})
        assert (status, body) == (200, image.manifest)

        bad = ("alice", "nope")
        assert (await fetch_token(fake.url, challenge, bad))[0] == 401

    assert fake.count("GET", "/token") == 6
