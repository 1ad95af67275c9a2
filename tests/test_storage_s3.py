"""storage.backend: s3 against moto's S3 server: blobs written through to the bucket, read through by
a replica with an empty store, deleted through, redirected to presigned URLs, and a bucket that is
down never turning a cached blob into a 500."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from support.images import make_image, make_layer, push_image
from support.s3 import Bucket, new_bucket, start_moto
from support.servers import free_port

DEAD_UPSTREAM = "http://127.0.0.1:1"  # nothing listens: any request to upstream fails


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(moto, tmp_path) -> Bucket:
    return new_bucket(moto.url, tmp_path)


def _storage(root, **s3) -> dict:
    return {"root": str(root), "backend": "s3", "s3": s3}


async def _pushed(registry_upstream, repo_name, sizes=(2048, 8192)):
    image = make_image(repo_name, sizes)
    await push_image(registry_upstream, repo_name, image)
    return image


async def test_a_pulled_blob_lands_in_the_bucket_byte_exact(make_wharf, registry_upstream, repo_name, bucket,
                                                             tmp_path):
    image = await _pushed(registry_upstream, repo_name)
    wharf = await make_wharf(registry_upstream, storage=_storage(tmp_path / "one", **bucket.s3_config()))
    name = f"{wharf.upstream_name(registry_upstream)}/{repo_name}"
    for layer in image.layers:
        resp = await wharf.client.get(f"/v2/{name}/blobs/{layer.digest}")
        assert resp.status == 200 and await resp.read() == layer.data
    for layer in image.layers:
        await bucket.wait_for(layer.digest)
        assert bucket.read(layer.digest) == layer.data


async def test_a_replica_with_an_empty_store_serves_the_bucket_without_upstream(
        make_wharf, registry_upstream, repo_name, bucket, tmp_path):
    image = await _pushed(registry_upstream, repo_name)
    first = await make_wharf(registry_upstream, storage=_storage(tmp_path / "one", **bucket.s3_config()))
    upstream = first.upstream_name(registry_upstream)
    layer = image.layers[1]
    assert (await (await first.client.get(f"/v2/{upstream}/{repo_name}/blobs/{layer.digest}")).read()) == layer.data
    await bucket.wait_for(layer.digest)
    # same name, but upstream is unreachable: only the bucket can answer
    second = await make_wharf(named_upstreams={upstream: DEAD_UPSTREAM},
                              storage=_storage(tmp_path / "empty", **bucket.s3_config()))
    head = await second.client.head(f"/v2/{upstream}/{repo_name}/blobs/{layer.digest}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(layer.data)
    resp = await second.client.get(f"/v2/{upstream}/{repo_name}/blobs/{layer.digest}")
    assert resp.status == 200
    assert await resp.read() == layer.data
    assert resp.headers["Docker-Content-Digest"] == layer.digest
    # brought into the second store, so it is served locally from now on
    algorithm, _, hex_part = layer.digest.partition(":")
    assert (tmp_path / "empty" / "blobs" / algorithm / hex_part).read_bytes() == layer.data
    never = make_layer(f"{repo_name}-never", 100)[0]
    missing = await second.client.get(f"/v2/{upstream}/{repo_name}/blobs/{never.digest}")
    assert 400 <= missing.status < 500 or missing.status == 503


async def test_redirect_mode_answers_307_to_a_url_with_the_exact_bytes(make_wharf, registry_upstream, repo_name,
                                                                      bucket, tmp_path):
    image = await _pushed(registry_upstream, repo_name)
    layer = image.layers[0]
    wharf = await make_wharf(registry_upstream, storage=_storage(tmp_path / "one",
                                                                 **bucket.s3_config(redirect=True)))
    path = f"/v2/{wharf.upstream_name(registry_upstream)}/{repo_name}/blobs/{layer.digest}"
    first = await wharf.client.get(path, allow_redirects=False)  # not in the bucket yet: served here
    assert first.status == 200 and await first.read() == layer.data
    await bucket.wait_for(layer.digest)
    resp = await wharf.client.get(path, allow_redirects=False)
    assert resp.status == 307
    location = resp.headers["Location"]
    assert location.startswith(bucket.endpoint_url) and "Signature" in location
    async with aiohttp.ClientSession() as plain, plain.get(location) as fetched:  # no Wharf credentials
        assert fetched.status == 200
        assert await fetched.read() == layer.data
    head = await wharf.client.head(path, allow_redirects=False)
    assert head.status == 200  # a HEAD is answered by Wharf


async def test_redirect_needs_an_authorized_client(make_wharf, auth_registry_upstream, repo_name, bucket, tmp_path):
    image = make_image(repo_name, (2048,))
    await push_image(auth_registry_upstream.url, repo_name, image, auth=auth_registry_upstream.auth)
    layer = image.layers[0]
    wharf = await make_wharf(auth_registry_upstream.url, auth=None,
                             storage=_storage(tmp_path / "one", **bucket.s3_config(redirect=True)))
    path = f"/v2/{wharf.upstream_name(auth_registry_upstream.url)}/{repo_name}/blobs/{layer.digest}"
    pulled = await wharf.client.get(path, headers=auth_registry_upstream.headers, allow_redirects=False)
    assert pulled.status == 200 and await pulled.read() == layer.data
    await bucket.wait_for(layer.digest)
    assert bucket.head(layer.digest)["Metadata"].get("wharf-public") == "0"
    anonymous = await wharf.client.get(path, allow_redirects=False)
    assert anonymous.status == 401 and "Location" not in anonymous.headers
    allowed = await wharf.client.get(path, headers=auth_registry_upstream.headers, allow_redirects=False)
    assert allowed.status == 307


async def test_bucket_down_never_fails_cached_or_cold_blobs(make_wharf, registry_upstream, repo_name, tmp_path):
    image = await _pushed(registry_upstream, repo_name)
    down = f"http://127.0.0.1:{free_port()}"  # no S3 endpoint there
    key_id, secret = tmp_path / "id", tmp_path / "secret"
    key_id.write_text("k")
    secret.write_text("s")
    wharf = await make_wharf(registry_upstream, storage=_storage(
        tmp_path / "one", bucket="gone", endpoint_url=down, redirect=True,
        access_key_id_file=str(key_id), secret_access_key_file=str(secret)))
    name = f"{wharf.upstream_name(registry_upstream)}/{repo_name}"
    for _ in range(2):  # cold (from upstream, the bucket's look skipped), then cached
        for layer in image.layers:
            resp = await wharf.client.get(f"/v2/{name}/blobs/{layer.digest}", allow_redirects=False)
            assert resp.status == 200
            assert await resp.read() == layer.data


async def test_a_blob_above_part_size_is_uploaded_in_parts(make_wharf, registry_upstream, repo_name, bucket,
                                                          tmp_path):
    image = await _pushed(registry_upstream, repo_name, sizes=(6 * 2**20 + 12345,))
    layer = image.layers[0]
    assert len(layer.data) > 5 * 2**20
    wharf = await make_wharf(registry_upstream, storage=_storage(tmp_path / "one",
                                                                 **bucket.s3_config(part_size="5MiB")))
    resp = await wharf.client.get(f"/v2/{wharf.upstream_name(registry_upstream)}/{repo_name}/blobs/{layer.digest}")
    assert await resp.read() == layer.data
    stored = await bucket.wait_for(layer.digest)
    assert stored["ETag"].strip('"').endswith("-2")  # S3's mark of a two-part upload
    assert bucket.read(layer.digest) == layer.data
    assert bucket.uploads_in_progress() == []


async def test_a_blob_evicted_from_the_store_stays_in_the_bucket_and_is_read_back(make_wharf, registry_upstream,
                                                                                    repo_name, bucket, tmp_path):
    """Eviction drops the local copy only: the bucket keeps the blob for every replica, and the next
    pull of it reads it back from the bucket."""
    old = await _pushed(registry_upstream, f"{repo_name}-old", sizes=(8192,))
    new = await _pushed(registry_upstream, f"{repo_name}-new", sizes=(8192,))
    root = tmp_path / "one"
    wharf = await make_wharf(registry_upstream, storage={**_storage(root, **bucket.s3_config()),
                                                         "max_cache_bytes": 12000})
    upstream = wharf.upstream_name(registry_upstream)
    evicted, kept = old.layers[0], new.layers[0]
    assert await (await wharf.client.get(f"/v2/{upstream}/{repo_name}-old/blobs/{evicted.digest}")).read() \
        == evicted.data
    await bucket.wait_for(evicted.digest)
    assert await (await wharf.client.get(f"/v2/{upstream}/{repo_name}-new/blobs/{kept.digest}")).read() == kept.data
    await bucket.wait_for(kept.digest)
    local_copy = root / "blobs" / "sha256" / evicted.digest.split(":", 1)[1]
    for _ in range(200):  # the eviction runs in a thread
        if not local_copy.exists():
            break
        await asyncio.sleep(0.05)
    assert not local_copy.exists()  # the older blob went to make room, here only
    assert bucket.read(evicted.digest) == evicted.data
    assert await (await wharf.client.get(f"/v2/{upstream}/{repo_name}-old/blobs/{evicted.digest}")).read() \
        == evicted.data


def test_s3_settings_are_validated_and_keys_never_shown(tmp_path):
    from proxy.config import ConfigError, config_from_dict
    from proxy.config_commands import masked

    key_id, secret = tmp_path / "id", tmp_path / "secret"
    key_id.write_text("AKIA-TEST-ID\n")
    secret.write_text("very-secret-key\n")
    with pytest.raises(ConfigError, match="bucket is required"):
        config_from_dict({"storage": {"backend": "s3"}})
    with pytest.raises(ConfigError, match="secret_access_key_file"):
        config_from_dict({"storage": {"backend": "s3", "s3": {"bucket": "b", "access_key_id_file": str(key_id)}}})
    config = config_from_dict({"storage": {"backend": "s3", "s3": {
        "bucket": "b", "endpoint_url": "http://user:pw@127.0.0.1:9000",
        "access_key_id_file": str(key_id), "secret_access_key_file": str(secret)}}})
    assert config.storage.s3.secret_access_key == "very-secret-key"
    shown = repr(config) + str(masked(config))
    assert "very-secret-key" not in shown and "AKIA-TEST-ID" not in shown and ":pw@" not in shown
