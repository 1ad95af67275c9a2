"""Tags and manifests: TTL, HEAD revalidation, stale-if-error, negative answers, rate limits."""

from __future__ import annotations

import asyncio

import pytest

from aiohttp.test_utils import TestServer

from support.fake_upstream import ANY_PATH, Fault, FakeRegistry, rate_limited
from support.images import MANIFEST_ACCEPT, make_image, make_index

REPO = "team/app"
ACCEPTS = [
    # skopeo/podman/docker send several Accept lines; containerd one comma-joined line
    [("Accept", "application/vnd.oci.image.index.v1+json"),
     ("Accept", "application/vnd.docker.distribution.manifest.list.v2+json"),
     ("Accept", "application/vnd.oci.image.manifest.v1+json"),
     ("Accept", "application/vnd.docker.distribution.manifest.v2+json")],
    [("Accept", MANIFEST_ACCEPT + ", */*")],
    [("Accept", "application/vnd.docker.distribution.manifest.list.v2+json, "
                "application/vnd.docker.distribution.manifest.v2+json, */*")],
]


async def _setup(fake_upstream, make_wharf, image=None, tag_ttl=300.0, **overrides):
    fake = await fake_upstream()
    image = image or make_index("tags", (300, 500))
    fake.add_image(REPO, image, tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options={"tag_ttl": tag_ttl, "read_timeout": 1.0}, **overrides)
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    return fake, wharf, image, name


async def test_tag_is_fetched_once_then_served_while_fresh(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf)
    for accept in ACCEPTS * 3:
        resp = await wharf.client.get(f"/v2/{name}/manifests/1.0", headers=accept)
        assert resp.status == 200
        assert await resp.read() == image.manifest
        assert resp.headers["Content-Type"] == image.media_type
        assert resp.headers["Docker-Content-Digest"] == image.digest
        resp = await wharf.client.head(f"/v2/{name}/manifests/1.0", headers=accept)
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(image.manifest)
    tag_path = fake.manifest_path(REPO, "1.0")
    assert fake.count("GET", tag_path) == 1
    assert fake.count("HEAD", tag_path) == 0


async def test_after_ttl_one_head_per_tag_whatever_the_accept(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf, tag_ttl=0.3)
    await wharf.client.get(f"/v2/{name}/manifests/1.0", headers=ACCEPTS[0])
    await asyncio.sleep(0.5)
    results = await asyncio.gather(*(wharf.client.get(f"/v2/{name}/manifests/1.0", headers=a)
                                     for a in ACCEPTS * 4))
    assert {r.status for r in results} == {200}
    tag_path = fake.manifest_path(REPO, "1.0")
    assert fake.count("GET", tag_path) == 1, "revalidation must not GET an unchanged manifest"
    assert fake.count("HEAD", tag_path) == 1


async def test_changed_tag_is_fetched_after_ttl(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf, tag_ttl=0.2)
    await wharf.client.get(f"/v2/{name}/manifests/1.0")
    newer = make_image("newer", (100,))
    fake.add_image(REPO, newer, tag="1.0")
    await asyncio.sleep(0.3)
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert await resp.read() == newer.manifest
    assert resp.headers["Docker-Content-Digest"] == newer.digest


async def test_digest_references_never_go_upstream_again(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf, tag_ttl=0)
    child = image.images[0]
    for _ in range(3):
        resp = await wharf.client.get(f"/v2/{name}/manifests/{child.digest}")
        assert resp.status == 200 and await resp.read() == child.manifest
        assert resp.headers["Content-Type"] == child.media_type
    assert fake.count(path=fake.manifest_path(REPO, child.digest)) == 1


@pytest.mark.parametrize("fault", [
    Fault(status=503), Fault(status=500), rate_limited(retry_after=60), Fault(hang=True),
], ids=["503", "500", "429", "hung"])
async def test_stale_tag_served_when_upstream_fails(fake_upstream, make_wharf, fault):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf, tag_ttl=0.1)
    await wharf.client.get(f"/v2/{name}/manifests/1.0")
    await asyncio.sleep(0.2)
    fake.fault(ANY_PATH, fault)
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.status == 200
    assert await resp.read() == image.manifest
    metrics = await (await wharf.client.get("/metrics")).text()
    assert 'wharf_cache_requests_total{kind="tag",result="stale"} 1.0' in metrics


async def test_cached_image_served_when_upstream_is_gone(make_wharf):
    fake = FakeRegistry()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    image = make_image("gone", (300, 500))
    fake.add_image(REPO, image, tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options={"tag_ttl": 0.1})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    await wharf.client.get(f"/v2/{name}/manifests/1.0")
    for blob in (image.config, *image.layers):
        await (await wharf.client.get(f"/v2/{name}/blobs/{blob.digest}")).read()
    await server.close()
    await asyncio.sleep(0.2)
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.status == 200 and await resp.read() == image.manifest
    for blob in (image.config, *image.layers):
        resp = await wharf.client.get(f"/v2/{name}/blobs/{blob.digest}")
        assert resp.status == 200 and await resp.read() == blob.data
    resp = await wharf.client.get(f"/v2/{name}/manifests/never-pulled")
    assert resp.status == 503


async def test_upstream_errors_without_cache_become_oci_errors(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf)
    fake.fault(ANY_PATH, Fault(status=503))
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.status == 503
    assert (await resp.json())["errors"][0]["code"] == "UNAVAILABLE"
    fake.fault(ANY_PATH, rate_limited(retry_after=60))
    resp = await wharf.client.get(f"/v2/{name}/manifests/other")
    assert resp.status == 429
    assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"


async def test_retry_after_keeps_wharf_away_from_upstream(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf, tag_ttl=0.1)
    fake.fault(ANY_PATH, rate_limited(retry_after=60))
    await wharf.client.get(f"/v2/{name}/manifests/1.0")
    fake.clear_faults()
    before = fake.count()
    for _ in range(5):
        resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
        assert resp.status == 429
    assert fake.count() == before, "Wharf kept asking during Retry-After"


async def test_unknown_tag_is_manifest_unknown_and_remembered(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf, cache={"negative_ttl": 30})
    for _ in range(4):
        resp = await wharf.client.get(f"/v2/{name}/manifests/missing")
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert fake.count(path=fake.manifest_path(REPO, "missing")) == 1


async def test_rate_limit_headers_are_exported_and_low_quota_revalidates_in_background(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf, tag_ttl=0.1,
                                            cache={"low_quota_remaining": 5})
    fake.set_ratelimit(limit=100, remaining=4, enforce=False)
    await wharf.client.get(f"/v2/{name}/manifests/1.0")
    metrics = await (await wharf.client.get("/metrics")).text()
    upstream = wharf.upstream_name(fake.url)
    assert f'wharf_upstream_ratelimit_limit{{upstream="{upstream}"}} 100.0' in metrics
    assert f'wharf_upstream_ratelimit_remaining{{upstream="{upstream}"}} 3.0' in metrics
    await asyncio.sleep(0.2)
    fake.fault(fake.manifest_path(REPO, "1.0"), Fault(bytes_per_second=1, methods=("HEAD",), hang=True))
    resp = await asyncio.wait_for(wharf.client.get(f"/v2/{name}/manifests/1.0"), timeout=0.9)
    assert resp.status == 200 and await resp.read() == image.manifest
    await asyncio.sleep(0.1)
    assert fake.count("HEAD", fake.manifest_path(REPO, "1.0")) == 1, "background revalidation did not run"


async def test_wrong_manifest_digest_from_upstream_is_refused_and_not_stored(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf, image=make_image("m", (10,)))
    fake.fault(fake.manifest_path(REPO, "1.0"), Fault(content=image.manifest.replace(b"{", b"{ ", 1), times=1))
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.status == 502
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.status == 200 and await resp.read() == image.manifest


async def test_client_accepting_only_docker_types_gets_upstream_answer_for_its_accept(fake_upstream, make_wharf):
    fake, wharf, image, name = await _setup(fake_upstream, make_wharf, image=make_index("x", (10,), oci=True))
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.headers["Content-Type"] == image.media_type
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0",
                                  headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    # the fake, like a registry without conversion, has nothing of that type
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_hung_upstream_serves_stale_tag_after_the_revalidate_timeout(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("hung", (100,))
    fake.add_image(REPO, image, tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options={"tag_ttl": 0.1, "read_timeout": 60},
                             cache={"revalidate_timeout": 0.5})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    await wharf.client.get(f"/v2/{name}/manifests/1.0")
    await asyncio.sleep(0.2)
    fake.fault(ANY_PATH, Fault(hang=True))
    resp = await asyncio.wait_for(wharf.client.get(f"/v2/{name}/manifests/1.0"), timeout=5)
    assert resp.status == 200 and await resp.read() == image.manifest
    # the revalidation is still waiting on upstream; others are not made to wait for it
    resp = await asyncio.wait_for(wharf.client.head(f"/v2/{name}/manifests/1.0"), timeout=5)
    assert resp.status == 200
    assert fake.count("HEAD", fake.manifest_path(REPO, "1.0")) == 1
