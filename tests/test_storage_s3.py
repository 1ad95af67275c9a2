"""storage.backend: s3 against moto's S3 server: blobs written through to the bucket, read through by
a replica with an empty store, deleted through, redirected to presigned URLs, and a bucket that is
down never turning a cached blob into a 500: it is skipped by its breaker, shown in /metrics and
/readyz, and sent what it missed when it is back."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc

import aiohttp
import pytest

from support.images import make_image, make_layer, push_image
from support.s3 import KEY_ID, SECRET, Bucket, FakeS3, new_bucket, restart_moto, start_moto
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


async def test_a_replica_with_an_empty_store_serves_the_bucket_without_downloading(
        make_wharf, fake_upstream, repo_name, bucket, tmp_path):
    fake = await fake_upstream()
    data = make_layer(repo_name, 9000)[0].data
    digest = fake.add_blob(repo_name, data)
    first = await make_wharf(fake.url, storage=_storage(tmp_path / "one", **bucket.s3_config()))
    upstream = first.upstream_name(fake.url)
    path = f"/v2/{upstream}/{repo_name}/blobs/{digest}"
    assert await (await first.client.get(path)).read() == data
    await bucket.wait_for(digest)
    second = await make_wharf(named_upstreams={upstream: fake.url},
                              storage=_storage(tmp_path / "empty", **bucket.s3_config()))
    head = await second.client.head(path)
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(data)
    resp = await second.client.get(path)
    assert resp.status == 200
    assert await resp.read() == data
    assert resp.headers["Docker-Content-Digest"] == digest
    assert fake.count("GET", fake.blob_path(repo_name, digest)) == 1  # the first replica's only
    # brought into the second store, so it is served locally from now on
    algorithm, _, hex_part = digest.partition(":")
    assert (tmp_path / "empty" / "blobs" / algorithm / hex_part).read_bytes() == data
    never = make_layer(f"{repo_name}-never", 100)[0]
    missing = await second.client.get(f"/v2/{upstream}/{repo_name}/blobs/{never.digest}")
    assert missing.status == 404


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

    # a replica with an empty store reads it back and does not upload it again (no HEAD can vouch
    # for a multipart object, and another upload would make just another such copy)
    await asyncio.sleep(1.1)  # the bucket's modification times have a resolution of a second
    second = await make_wharf(named_upstreams={wharf.upstream_name(registry_upstream): registry_upstream},
                              storage=_storage(tmp_path / "two", **bucket.s3_config(part_size="5MiB")))
    path = f"/v2/{wharf.upstream_name(registry_upstream)}/{repo_name}/blobs/{layer.digest}"
    resp = await second.client.get(path, headers={"Range": "bytes=10-19"})  # hashed whole, then answered
    assert resp.status == 206 and await resp.read() == layer.data[10:20]
    resp = await second.client.get(path)
    assert int(resp.headers["Content-Length"]) == len(layer.data) and await resp.read() == layer.data
    for _ in range(30):  # a write-through would start at once, and take a moment
        await asyncio.sleep(0.1)
        assert bucket.head(layer.digest)["LastModified"] == stored["LastModified"], "uploaded again"


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


# hardening (issue 12 review) ---------------------------------------------------------------------
async def _fake_with_blob(fake_upstream, repo_name, size=9000, salt=""):
    fake = await fake_upstream()
    data = make_layer(f"{repo_name}{salt}", size)[0].data
    return fake, data, fake.add_blob(repo_name, data)


async def _cache_requests(wharf, result: str) -> float:
    text = await (await wharf.client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith("wharf_cache_requests_total{") and 'kind="blob"' in line and f'result="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "with-its-own-checksum"])
async def test_an_object_that_is_not_the_blob_is_dropped_and_the_pull_goes_upstream(
        make_wharf, fake_upstream, repo_name, bucket, tmp_path, checksum, caplog):
    fake, data, digest = await _fake_with_blob(fake_upstream, repo_name)
    bucket.plant(digest, b"x" * len(data), checksum=checksum)  # same size, other bytes
    wharf = await make_wharf(fake.url, storage=_storage(tmp_path / "one", **bucket.s3_config()))
    path = f"/v2/{wharf.upstream_name(fake.url)}/{repo_name}/blobs/{digest}"
    resp = await wharf.client.get(path)
    assert resp.status == 200 and await resp.read() == data
    assert fake.count("GET", fake.blob_path(repo_name, digest)) == 1
    assert await _cache_requests(wharf, "bucket_dropped") == 1
    assert sum("does not hold" in record.getMessage() for record in caplog.records) == 1
    for _ in range(200):  # the bad object is gone, and the verified blob is written through in its place
        if bucket.head(digest) is not None and bucket.read(digest) == data:
            break
        await asyncio.sleep(0.05)
    assert bucket.read(digest) == data
    assert await (await wharf.client.get(path)).read() == data


async def test_a_bad_object_is_never_redirected_to_and_is_replaced(make_wharf, fake_upstream, repo_name,
                                                                  bucket, tmp_path):
    fake, data, digest = await _fake_with_blob(fake_upstream, repo_name)
    bucket.plant(digest, b"planted " * (len(data) // 8), checksum=True)
    wharf = await make_wharf(fake.url, storage=_storage(tmp_path / "one", **bucket.s3_config(redirect=True)))
    path = f"/v2/{wharf.upstream_name(fake.url)}/{repo_name}/blobs/{digest}"
    first = await wharf.client.get(path, allow_redirects=False)
    assert first.status == 200 and await first.read() == data  # served here, from upstream
    for _ in range(200):
        if bucket.checksum(digest) is not None and bucket.read(digest) == data:
            break
        await asyncio.sleep(0.05)
    assert bucket.read(digest) == data
    again = await wharf.client.get(path, allow_redirects=False)
    assert again.status == 307  # what Wharf wrote itself is redirected to
    async with aiohttp.ClientSession() as plain, plain.get(again.headers["Location"]) as fetched:
        assert await fetched.read() == data


async def test_an_object_planted_over_a_written_blob_is_not_redirected_to(make_wharf, fake_upstream, repo_name,
                                                                          bucket, tmp_path):
    fake, data, digest = await _fake_with_blob(fake_upstream, repo_name)
    wharf = await make_wharf(fake.url, storage=_storage(tmp_path / "one", **bucket.s3_config(redirect=True)))
    path = f"/v2/{wharf.upstream_name(fake.url)}/{repo_name}/blobs/{digest}"
    assert await (await wharf.client.get(path, allow_redirects=False)).read() == data
    await bucket.wait_for(digest)
    assert (await wharf.client.get(path, allow_redirects=False)).status == 307
    bucket.plant(digest, b"y" * len(data), checksum=True)  # a writer to the bucket replaces it
    resp = await wharf.client.get(path, allow_redirects=False)
    assert resp.status == 200 and await resp.read() == data


async def test_an_existing_object_is_verified_before_the_upload_skips_it(make_wharf, fake_upstream, repo_name,
                                                                         bucket, tmp_path):
    """The right bytes without the server's checksum (written by an older Wharf, or by hand) are
    read through after hashing, then uploaded again with the checksum that makes them redirectable."""
    fake, data, digest = await _fake_with_blob(fake_upstream, repo_name)
    bucket.plant(digest, data, checksum=False)
    wharf = await make_wharf(fake.url, storage=_storage(tmp_path / "one", **bucket.s3_config(redirect=True)))
    path = f"/v2/{wharf.upstream_name(fake.url)}/{repo_name}/blobs/{digest}"
    assert await (await wharf.client.get(path, allow_redirects=False)).read() == data
    expected = base64.b64encode(bytes.fromhex(digest.split(":")[1])).decode()
    for _ in range(200):
        if bucket.checksum(digest) == expected:
            break
        await asyncio.sleep(0.05)
    assert bucket.checksum(digest) == expected
    assert (await wharf.client.get(path, allow_redirects=False)).status == 307


async def test_a_hanging_bucket_is_bounded_then_skipped(make_wharf, fake_upstream, repo_name, tmp_path):
    hanging = await FakeS3(hang_head=True).start()
    try:
        fake = await fake_upstream()
        blobs = [fake.add_blob(repo_name, make_layer(f"{repo_name}-{i}", 3000)[0].data) for i in range(6)]
        wharf = await make_wharf(fake.url, storage=_storage(
            tmp_path / "one", **_fake_s3_config(hanging, tmp_path, head_timeout=0.3, breaker_failures=3)))
        upstream = wharf.upstream_name(fake.url)
        for digest in blobs:
            began = time.monotonic()
            resp = await wharf.client.get(f"/v2/{upstream}/{repo_name}/blobs/{digest}")
            assert resp.status == 200
            await resp.read()
            assert time.monotonic() - began < 2.5
        assert hanging.count("HEAD") == 3  # then the breaker skips the bucket
    finally:
        await hanging.stop()


async def test_the_negative_cache_answers_before_the_bucket(make_wharf, fake_upstream, repo_name, tmp_path):
    hanging = await FakeS3(hang_head=True).start()
    try:
        fake = await fake_upstream()
        wharf = await make_wharf(fake.url, storage=_storage(
            tmp_path / "one", **_fake_s3_config(hanging, tmp_path, head_timeout=0.2, breaker_failures=0)))
        never = make_layer(f"{repo_name}-never", 100)[0]
        path = f"/v2/{wharf.upstream_name(fake.url)}/{repo_name}/blobs/{never.digest}"
        for _ in range(3):
            assert (await wharf.client.get(path)).status == 404
        assert hanging.count("HEAD") == 1
    finally:
        await hanging.stop()


async def test_a_bucket_that_fails_after_its_head_never_fails_a_pull(make_wharf, fake_upstream, repo_name,
                                                                     tmp_path):
    fake, data, digest = await _fake_with_blob(fake_upstream, repo_name)
    broken = await FakeS3(size=len(data)).start()  # HEAD says it is there; GET answers 503
    try:
        wharf = await make_wharf(fake.url, storage=_storage(tmp_path / "one", **_fake_s3_config(broken, tmp_path)))
        resp = await wharf.client.get(f"/v2/{wharf.upstream_name(fake.url)}/{repo_name}/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data
        assert broken.count("GET") >= 1
    finally:
        await broken.stop()


async def test_stopped_bucket_never_fails_a_pull(make_wharf, fake_upstream, repo_name, tmp_path):
    server = start_moto(tmp_path / "moto")
    bucket = new_bucket(server.url, tmp_path)
    fake, data, digest = await _fake_with_blob(fake_upstream, repo_name)
    wharf = await make_wharf(fake.url, storage=_storage(tmp_path / "one", **bucket.s3_config(redirect=True)))
    path = f"/v2/{wharf.upstream_name(fake.url)}/{repo_name}/blobs/{digest}"
    assert await (await wharf.client.get(path, allow_redirects=False)).read() == data
    await bucket.wait_for(digest)
    server.stop()
    cold = make_layer(f"{repo_name}-cold", 5000)[0]
    cold_digest = fake.add_blob(repo_name, cold.data)
    for digest_, body in ((digest, data), (cold_digest, cold.data)):
        resp = await wharf.client.get(f"/v2/{wharf.upstream_name(fake.url)}/{repo_name}/blobs/{digest_}",
                                      allow_redirects=False)
        assert resp.status == 200 and await resp.read() == body


async def test_uploads_are_bounded(make_wharf, fake_upstream, repo_name, tmp_path):
    slow = await FakeS3(put_seconds=0.3).start()
    try:
        fake = await fake_upstream()
        blobs = [fake.add_blob(repo_name, make_layer(f"{repo_name}-{i}", 4000)[0].data) for i in range(6)]
        wharf = await make_wharf(fake.url, storage=_storage(tmp_path / "one",
                                                            **_fake_s3_config(slow, tmp_path, max_uploads=2)))
        upstream = wharf.upstream_name(fake.url)
        await asyncio.gather(*(_read(wharf, f"/v2/{upstream}/{repo_name}/blobs/{d}") for d in blobs))
        for _ in range(200):
            if slow.count("PUT") == len(blobs):
                break
            await asyncio.sleep(0.05)
        assert slow.count("PUT") == len(blobs)
        assert slow.most_puts_in_flight == 2
    finally:
        await slow.stop()


async def test_an_upload_streams_its_parts(bucket, tmp_path):
    """Memory stays flat in the part size: a part is sent from the file a chunk at a time."""
    from proxy.config import S3Config
    from proxy.oci.digest import Digest
    from proxy.storage.objects import ObjectStore

    data = os.urandom(11 * 2**20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    objects = ObjectStore(S3Config(**{**bucket.s3_config(part_size="5MiB"), "access_key_id": KEY_ID,
                                      "secret_access_key": SECRET}))
    await objects.open()
    try:
        tracemalloc.start()
        await objects.upload(path, digest, len(data))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        await objects.close()
    assert bucket.read(str(digest)) == data
    assert peak < 3 * 2**20, f"peak {peak} bytes for 5 MiB parts"


async def test_wharf_gc_deletes_through_to_the_bucket(make_wharf, repo_name, bucket, tmp_path):
    root = tmp_path / "one"
    wharf = await make_wharf(gc={"interval_seconds": 0}, access={"retention_days": 0},
                             storage=_storage(root, **bucket.s3_config()))
    image = make_image("gc-s3", (1200,))
    await push_image(wharf.url, repo_name, image, tag="x")
    for digest in image.blobs:
        await bucket.wait_for(digest)
    await wharf.client.delete(f"/v2/{repo_name}/manifests/{image.digest}")
    config = tmp_path / "gc.yaml"
    config.write_text(json.dumps({"storage": _storage(root, **bucket.s3_config()), "upstreams": [],
                                  "default_upstream": None, "access": {"retention_days": 0}}))
    done = subprocess.run([sys.executable, "-m", "proxy", "gc", "--config", str(config), "--grace", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed"] >= 2
    for digest in image.blobs:
        assert bucket.head(digest) is None


async def test_a_delete_right_after_an_upload_leaves_no_object(bucket, tmp_path):
    from proxy.config import S3Config
    from proxy.oci.digest import Digest
    from proxy.storage.objects import BlobTier, ObjectStore

    data = os.urandom(300_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    objects = ObjectStore(S3Config(**{**bucket.s3_config(), "access_key_id": KEY_ID, "secret_access_key": SECRET}))
    await objects.open()
    running: list[asyncio.Task] = []
    tier = BlobTier(objects, lambda work, name: running.append(asyncio.ensure_future(work)), lambda _: path)
    try:
        tier.start()
        tier.added(digest, len(data))
        tier.removed(digest)  # gc took it before the write-through ran
        await asyncio.gather(*running)
    finally:
        await objects.close()
    assert bucket.head(str(digest)) is None


async def test_the_public_flag_of_an_object_is_not_trusted(make_wharf, auth_registry_upstream, repo_name, bucket,
                                                           tmp_path):
    image = make_image(repo_name, (2048,))
    await push_image(auth_registry_upstream.url, repo_name, image, auth=auth_registry_upstream.auth)
    layer = image.layers[0]
    first = await make_wharf(auth_registry_upstream.url, auth=None,
                             storage=_storage(tmp_path / "one", **bucket.s3_config()))
    upstream = first.upstream_name(auth_registry_upstream.url)
    path = f"/v2/{upstream}/{repo_name}/blobs/{layer.digest}"
    assert (await first.client.get(path, headers=auth_registry_upstream.headers)).status == 200
    await bucket.wait_for(layer.digest)
    key = bucket.key(layer.digest)  # a writer to the bucket marks it public
    bucket.client.copy_object(Bucket=bucket.name, Key=key, CopySource={"Bucket": bucket.name, "Key": key},
                              Metadata={"wharf-public": "1"}, MetadataDirective="REPLACE")
    second = await make_wharf(named_upstreams={upstream: auth_registry_upstream.url}, auth=None,
                              storage=_storage(tmp_path / "two", **bucket.s3_config()))
    anonymous = await second.client.get(path)
    assert anonymous.status == 401
    allowed = await second.client.get(path, headers=auth_registry_upstream.headers)
    assert allowed.status == 200 and await allowed.read() == layer.data


# the bucket's breaker (issue 12 leftovers) --------------------------------------------------------
_STATES = {"0.0": "closed", "1.0": "half_open", "2.0": "open"}


async def _bucket_state(wharf, bucket: str) -> str:
    """The bucket's breaker as /metrics shows it."""
    text = await (await wharf.client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(f'wharf_object_storage_circuit_state{{bucket="{bucket}"}}'):
            return _STATES[line.rsplit(" ", 1)[1]]
    raise AssertionError(f"no breaker gauge for bucket {bucket}")


async def _missed_uploads(wharf) -> float:
    text = await (await wharf.client.get("/metrics")).text()
    return float(next(line for line in text.splitlines()
                      if line.startswith("wharf_object_storage_missed_uploads ")).rsplit(" ", 1)[1])


async def _readyz(wharf) -> tuple[int, dict]:
    resp = await wharf.client.get("/readyz")
    return resp.status, await resp.json()


async def _settled(predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the background work never settled"
        await asyncio.sleep(0.05)


async def test_a_bucket_whose_reads_fail_is_skipped_after_breaker_failures(make_wharf, fake_upstream, repo_name,
                                                                          tmp_path):
    """HEAD finds every blob but every GET fails: the failed reads open the breaker (the HEADs that
    answer do not close it), then pulls go to upstream without asking the bucket at all."""
    fake = await fake_upstream()
    layers = [make_layer(f"{repo_name}-{i}", 3000)[0].data for i in range(5)]
    blobs = [(fake.add_blob(repo_name, data), data) for data in layers]
    broken = await FakeS3(size=3000).start()
    try:
        wharf = await make_wharf(fake.url, storage=_storage(tmp_path / "one", **_fake_s3_config(
            broken, tmp_path, breaker_failures=3, breaker_cooldown=60)))
        upstream = wharf.upstream_name(fake.url)
        seen = None
        for number, (digest, data) in enumerate(blobs, start=1):
            assert await _read(wharf, f"/v2/{upstream}/{repo_name}/blobs/{digest}") == data
            assert await _bucket_state(wharf, "fake") == ("open" if number >= 3 else "closed"), number
            if number == 3:
                await _settled(lambda: broken.count("PUT") == 3)  # the write-throughs are done
                seen = (broken.count("HEAD"), broken.count("GET"))
        await _settled(lambda: broken.count("PUT") == 5)
        assert (broken.count("HEAD"), broken.count("GET")) == seen  # skipped: no look, no read
        assert all(fake.count("GET", fake.blob_path(repo_name, digest)) == 1 for digest, _ in blobs)
    finally:
        await broken.stop()


async def test_a_stopped_bucket_is_shown_in_metrics_and_readyz(make_wharf, fake_upstream, repo_name, tmp_path):
    server = start_moto(tmp_path / "moto")
    try:
        bucket = new_bucket(server.url, tmp_path)
        fake = await fake_upstream()
        blobs = [(fake.add_blob(repo_name, data), data)
                 for data in (make_layer(f"{repo_name}-{i}", 2000)[0].data for i in range(2))]
        wharf = await make_wharf(fake.url, storage=_storage(tmp_path / "one", **bucket.s3_config(
            breaker_failures=2, breaker_cooldown=60)))
        upstream = wharf.upstream_name(fake.url)
        status, body = await _readyz(wharf)
        assert status == 200 and "degraded" not in body
        assert await _bucket_state(wharf, bucket.name) == "closed"
        server.stop()
        for digest, data in blobs:
            assert await _read(wharf, f"/v2/{upstream}/{repo_name}/blobs/{digest}") == data
        assert await _bucket_state(wharf, bucket.name) == "open"
        status, body = await _readyz(wharf)
        assert status == 200 and body["status"] == "ready"
        assert any(bucket.name in problem for problem in body.get("degraded", [])), body
    finally:
        server.stop()


async def test_an_upload_the_bucket_missed_lands_when_it_is_back(make_wharf, fake_upstream, repo_name, tmp_path,
                                                                 caplog):
    """Blobs filled while the bucket is down reach it once it is back, with no other pull; one
    evicted from the local store meanwhile does not (there is nothing left to upload)."""
    server = start_moto(tmp_path / "moto")
    try:
        bucket = new_bucket(server.url, tmp_path)
        fake = await fake_upstream()
        evicted, kept = (make_layer(f"{repo_name}-{name}", 8192)[0].data for name in ("old", "new"))
        evicted_digest, kept_digest = fake.add_blob(repo_name, evicted), fake.add_blob(repo_name, kept)
        root = tmp_path / "one"
        wharf = await make_wharf(fake.url, storage={**_storage(root, **bucket.s3_config(
            breaker_failures=2, breaker_cooldown=1)), "max_cache_bytes": 12000})
        server.stop()
        for digest, data in ((evicted_digest, evicted), (kept_digest, kept)):
            assert await _read(wharf, f"/v2/{wharf.upstream_name(fake.url)}/{repo_name}/blobs/{digest}") == data
            await _settled(lambda: any(f"write-through of {digest} failed" in r.getMessage()
                                       for r in caplog.records))
        assert await _missed_uploads(wharf) >= 1  # the kept one at least (the evicted one may be dropped already)
        local_copy = root / "blobs" / "sha256" / evicted_digest.split(":", 1)[1]
        await _settled(lambda: not local_copy.exists())  # the budget made room for the newer one
        server = restart_moto(server)
        bucket.create()  # moto starts empty
        await bucket.wait_for(kept_digest)
        assert bucket.read(kept_digest) == kept
        for _ in range(100):  # forgotten as the PUT's answer comes, a moment after the object is there
            if await _missed_uploads(wharf) == 0:
                break
            await asyncio.sleep(0.05)
        assert await _missed_uploads(wharf) == 0
        assert bucket.head(evicted_digest) is None  # tried first (the oldest), and gone locally
        assert await _bucket_state(wharf, bucket.name) == "closed"
        assert "degraded" not in (await _readyz(wharf))[1]
        assert fake.count("GET", fake.blob_path(repo_name, kept_digest)) == 1
    finally:
        server.stop()


async def _read(wharf, path: str) -> bytes:
    resp = await wharf.client.get(path)
    assert resp.status == 200
    return await resp.read()


def _fake_s3_config(fake: FakeS3, tmp_path, **extra) -> dict:
    key_id, secret = tmp_path / "fake-id", tmp_path / "fake-secret"
    key_id.write_text("k")
    secret.write_text("s")
    return {"bucket": "fake", "endpoint_url": fake.url, "access_key_id_file": str(key_id),
            "secret_access_key_file": str(secret), **extra}
