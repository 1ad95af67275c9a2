"""What operators see: /metrics, /healthz, /readyz, the access log, the size budget, Redis sharing."""

from __future__ import annotations

import asyncio
import json
import logging
import os

from proxy.app import BLOBS, BUDGET
from support.images import MANIFEST_ACCEPT, make_image, push_image

REPO = "team/app"


async def test_health_and_readiness(make_wharf, registry_upstream):
    wharf = await make_wharf(registry_upstream)
    assert (await wharf.client.get("/healthz")).status == 200
    resp = await wharf.client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"


async def test_readiness_says_degraded_when_redis_is_unreachable(make_wharf, registry_upstream):
    """Still ready (serving works without Redis; see tests/test_redis_down.py), but says so."""
    wharf = await make_wharf(registry_upstream, redis={"url": "redis://127.0.0.1:1/0"})
    resp = await wharf.client.get("/readyz")
    assert resp.status == 200 and "redis" in (await resp.json())["degraded"][0]


async def test_metrics_count_hits_misses_bytes_and_upstream_requests(make_wharf, registry_upstream, repo_name):
    image = make_image("metrics", (10_000,))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    wharf = await make_wharf(registry_upstream)
    upstream = wharf.upstream_name(registry_upstream)
    name = f"{upstream}/{repo_name}"
    for _ in range(2):
        await wharf.client.get(f"/v2/{name}/manifests/v1")
        await (await wharf.client.get(f"/v2/{name}/blobs/{image.layers[0].digest}")).read()
    text = await (await wharf.client.get("/metrics")).text()
    assert 'wharf_cache_requests_total{kind="blob",result="miss"} 1.0' in text
    assert 'wharf_cache_requests_total{kind="blob",result="hit"} 1.0' in text
    assert 'wharf_cache_requests_total{kind="tag",result="miss"} 1.0' in text
    assert 'wharf_cache_requests_total{kind="tag",result="hit"} 1.0' in text
    size = image.layers[0].size
    assert f'wharf_bytes_served_total{{source="cache"}} {size}.0' in text
    assert f'wharf_bytes_served_total{{source="upstream"}} {size}.0' in text
    assert f'wharf_upstream_requests_total{{method="GET",status="200",upstream="{upstream}"}} 2.0' in text
    assert 'wharf_http_requests_total{method="GET",route="blob",status="200"} 2.0' in text
    assert "wharf_fills_in_flight 0.0" in text
    assert 'wharf_store_bytes{kind="cached"}' in text


async def test_access_log_line_has_cache_status_and_no_credentials(aiohttp_server, tmp_path, registry_upstream,
                                                                   repo_name, caplog):
    from aiohttp import ClientSession

    from proxy.app import create_app
    from proxy.config import config_from_dict
    from proxy.http.accesslog import JsonAccessLogger

    image = make_image("log", (100,))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    upstream = registry_upstream.split("://", 1)[1]
    app = create_app(config_from_dict({"storage": {"root": str(tmp_path / "w")},
                                       "upstreams": [{"name": upstream, "url": registry_upstream}]}))
    server = await aiohttp_server(app, access_log=logging.getLogger("wharf.access"),
                                  access_log_class=JsonAccessLogger)
    caplog.set_level(logging.INFO, logger="wharf.access")
    async with ClientSession() as session:
        url = str(server.make_url(f"/v2/{upstream}/{repo_name}/manifests/v1"))
        for _ in range(2):
            async with session.get(url, headers={"Authorization": "Basic c2VjcmV0OnNlY3JldA=="}) as resp:
                await resp.read()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "wharf.access"]
    assert [line["cache"] for line in lines] == ["miss", "hit"]
    assert all(line["status"] == 200 for line in lines)
    assert "c2VjcmV0" not in caplog.text


async def test_budget_evicts_least_recently_pulled_first(make_wharf, registry_upstream, repo_name, tmp_path):
    images = [make_image(f"evict{i}", (40_000,)) for i in range(4)]
    for i, image in enumerate(images):
        await push_image(registry_upstream, repo_name, image, tag=f"t{i}")
    wharf = await make_wharf(registry_upstream, storage={"root": str(tmp_path / "evict"), "max_cache_bytes": 100_000})
    name = f"{wharf.upstream_name(registry_upstream)}/{repo_name}"
    blobs = wharf.app[BLOBS]

    async def pull(image):
        await (await wharf.client.get(f"/v2/{name}/blobs/{image.layers[0].digest}")).read()

    def stored(image) -> bool:
        algorithm, hex_part = image.layers[0].digest.split(":")
        return (blobs.blob_dir / algorithm / hex_part).exists()

    await pull(images[0])
    await pull(images[1])
    await asyncio.sleep(0.01)
    await pull(images[0])          # images[0] is now more recently pulled than images[1]
    await pull(images[2])          # 120 kB > 100 kB: evict down to 90 kB
    assert await asyncio.to_thread(wharf.app[BUDGET].wait_idle, 10)  # evictions run in a thread after the commit
    assert stored(images[0]) and stored(images[2])
    assert not stored(images[1])
    text = await (await wharf.client.get("/metrics")).text()
    assert "wharf_evictions_total 1.0" in text
    # an evicted blob is simply fetched again
    await pull(images[1])
    assert stored(images[1])


async def test_redis_shares_negative_answers_between_replicas(make_wharf, fake_upstream, redis_url):
    fake = await fake_upstream()
    first = await make_wharf(fake.url, redis={"url": redis_url})
    second = await make_wharf(fake.url, redis={"url": redis_url})
    name = f"{first.upstream_name(fake.url)}/{REPO}"
    tag = f"missing-{os.getpid()}-{id(fake)}"
    assert (await first.client.get(f"/v2/{name}/manifests/{tag}")).status == 404
    assert (await second.client.get(f"/v2/{name}/manifests/{tag}")).status == 404
    assert fake.count(path=fake.manifest_path(REPO, tag)) == 1


async def test_replicas_asking_for_one_tag_at_once_make_one_upstream_get(make_wharf, fake_upstream, redis_url, tmp_path):
    """Two replicas on one store and one Redis, each asked at the same moment for a tag they do
    not hold (the answer is slow): upstream sees one GET for it, and one for a tag it does not have."""
    from support.fake_upstream import Fault

    fake = await fake_upstream()
    image = make_image("one-get", (100,))
    tag = f"t{os.getpid()}{id(fake)}"
    fake.add_image(REPO, image, tag=tag)
    fake.fault(fake.manifest_path(REPO, tag), Fault(delay=0.5, methods=("GET",)))
    store = {"root": str(tmp_path / "shared-volume")}
    replicas = [await make_wharf(fake.url, redis={"url": redis_url}, storage=store) for _ in range(2)]
    name = f"{replicas[0].upstream_name(fake.url)}/{REPO}"
    headers = {"Accept": MANIFEST_ACCEPT}
    answers = await asyncio.gather(*(wharf.client.get(f"/v2/{name}/manifests/{tag}", headers=headers)
                                     for wharf in replicas for _ in range(3)))
    assert [resp.status for resp in answers] == [200] * 6
    assert [await resp.read() for resp in answers] == [image.manifest] * 6
    assert fake.count("GET", fake.manifest_path(REPO, tag)) == 1

    missing = f"gone{os.getpid()}{id(fake)}"
    fake.fault(fake.manifest_path(REPO, missing), Fault(status=404, delay=0.5, methods=("GET",)))
    answers = await asyncio.gather(*(wharf.client.get(f"/v2/{name}/manifests/{missing}") for wharf in replicas))
    assert [resp.status for resp in answers] == [404, 404]
    assert fake.count("GET", fake.manifest_path(REPO, missing)) == 1


async def test_replicas_revalidating_one_tag_at_once_make_one_upstream_head(make_wharf, fake_upstream, redis_url, tmp_path):
    """Once a tag's TTL ran out, requests on two replicas at the same moment revalidate it once:
    one HEAD upstream (slow to answer), no GET, and every client gets the manifest."""
    from support.fake_upstream import Fault

    fake = await fake_upstream()
    image = make_image("one-head", (100,))
    tag = f"t{os.getpid()}{id(fake)}"
    fake.add_image(REPO, image, tag=tag)
    store = {"root": str(tmp_path / "shared-volume")}
    replicas = [await make_wharf(fake.url, redis={"url": redis_url}, storage=store,
                                 upstream_options={"tag_ttl": 1}) for _ in range(2)]
    name = f"{replicas[0].upstream_name(fake.url)}/{REPO}"
    headers = {"Accept": MANIFEST_ACCEPT}
    assert (await replicas[0].client.get(f"/v2/{name}/manifests/{tag}", headers=headers)).status == 200
    await asyncio.sleep(1.2)  # the tag is stale now
    fake.fault(fake.manifest_path(REPO, tag), Fault(delay=0.5, methods=("HEAD",)))
    answers = await asyncio.gather(*(wharf.client.get(f"/v2/{name}/manifests/{tag}", headers=headers)
                                     for wharf in replicas for _ in range(3)))
    assert [resp.status for resp in answers] == [200] * 6
    assert [await resp.read() for resp in answers] == [image.manifest] * 6
    assert fake.count("HEAD", fake.manifest_path(REPO, tag)) == 1
    assert fake.count("GET", fake.manifest_path(REPO, tag)) == 1  # the first pull's


async def test_redis_shares_tag_freshness_and_tokens(make_wharf, fake_upstream, redis_url):
    fake = await fake_upstream()
    image = make_image("redis", (100,))
    tag = f"t{os.getpid()}{id(fake)}"
    fake.add_image(REPO, image, tag=tag)
    fake.require_bearer(users={"u": "p"}, private={REPO})
    first = await make_wharf(fake.url, redis={"url": redis_url})
    second = await make_wharf(fake.url, redis={"url": redis_url})
    name = f"{first.upstream_name(fake.url)}/{REPO}"
    import base64
    basic = "Basic " + base64.b64encode(b"u:p").decode()
    token = (await (await first.client.get("/token", headers={"Authorization": basic})).json())["token"]
    # a token issued by one replica works on the other
    resp = await second.client.get(f"/v2/{name}/manifests/{tag}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200 and await resp.read() == image.manifest


async def test_eviction_skips_a_blob_that_is_being_read(make_wharf, fake_upstream, tmp_path):
    import aiohttp

    fake = await fake_upstream()
    big = os.urandom(16 * 1024 * 1024)
    small = [os.urandom(3 * 1024 * 1024) for _ in range(3)]
    big_digest = fake.add_blob(REPO, big)
    small_digests = [fake.add_blob(REPO, data) for data in small]
    wharf = await make_wharf(fake.url, storage={"root": str(tmp_path / "s"), "max_cache_bytes": 20 * 1024 * 1024})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    blobs = wharf.app[BLOBS]
    big_path = blobs.blob_dir / "sha256" / big_digest.split(":")[1]
    await (await wharf.client.get(f"/v2/{name}/blobs/{big_digest}")).read()  # cached, least recent
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{wharf.url}/v2/{name}/blobs/{big_digest}") as slow_reader:
            first = await slow_reader.content.readexactly(64 * 1024)  # then stop reading for a while
            for digest in small_digests:  # 16 + 9 MiB > 20 MiB budget: the big blob is the LRU one
                await (await wharf.client.get(f"/v2/{name}/blobs/{digest}")).read()
            assert await asyncio.to_thread(wharf.app[BUDGET].wait_idle, 10)
            assert big_path.exists(), "evicted while a client was still reading it"
            rest = await slow_reader.read()
    assert first + rest == big
    # once nobody reads it, the next eviction may take it
    await (await wharf.client.get(f"/v2/{name}/blobs/{small_digests[0]}")).read()
    assert await asyncio.to_thread(wharf.app[BUDGET].wait_idle, 10)  # that fill's eviction, if any, is done
    blobs.flush_access_times()
    wharf.app[BUDGET].evict()
    assert not big_path.exists()
