"""The circuit breaker per upstream: an upstream that hangs or refuses is remembered, later
requests fail (or go stale) at once, and Wharf recovers by itself when upstream answers again."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestServer

from support.fake_upstream import ANY_PATH, Fault, FakeRegistry
from support.images import make_image
from support.servers import free_port

from proxy.circuit import CLOSED, HALF_OPEN, OPEN

REPO = "team/app"
FAST = {"first_byte_timeout": 0.8, "circuit_failures": 2, "circuit_cooldown": 1.0}  # 0.8: room for a busy machine


async def _state(wharf, upstream: str) -> str:
    metrics = await (await wharf.client.get("/metrics")).text()
    for line in metrics.splitlines():
        if line.startswith(f'wharf_upstream_circuit_state{{upstream="{upstream}"}}'):
            return {"0.0": CLOSED, "1.0": HALF_OPEN, "2.0": OPEN}[line.rsplit(" ", 1)[1]]
    raise AssertionError("no circuit gauge for " + upstream)


async def _get(wharf, path: str):
    resp = await wharf.client.get(path)
    return resp.status, resp.headers, await resp.read()


async def test_hung_upstream_opens_the_circuit_then_recovers(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("circuit", (10,))
    fake.add_image(REPO, image, tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options=FAST)
    upstream = wharf.upstream_name(fake.url)
    manifest = f"/v2/{upstream}/{REPO}/manifests"
    assert await _state(wharf, upstream) == CLOSED
    fake.fault(ANY_PATH, Fault(hang=True))
    for tag in ("a", "b"):
        status, _, _ = await _get(wharf, f"{manifest}/{tag}")
        assert status == 503
    asked = fake.count()
    assert await _state(wharf, upstream) == OPEN
    status, headers, body = await _get(wharf, f"{manifest}/1.0")
    assert status == 503 and b"is not answering" in body and int(headers["Retry-After"]) >= 1
    assert fake.count() == asked, "an open circuit still sent requests upstream"

    fake.clear_faults()
    await asyncio.sleep(1.1)
    assert await _state(wharf, upstream) == HALF_OPEN
    status, _, body = await _get(wharf, f"{manifest}/1.0")
    assert status == 200 and body == image.manifest
    assert await _state(wharf, upstream) == CLOSED
    metrics = await (await wharf.client.get("/metrics")).text()
    assert f'wharf_upstream_circuit_opened_total{{upstream="{upstream}"}} 1.0' in metrics


async def test_open_circuit_serves_stale_tags_without_waiting(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("stale", (10,))
    fake.add_image(REPO, image, tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options={**FAST, "tag_ttl": 0.1, "circuit_failures": 1},
                             cache={"revalidate_timeout": 30})
    path = f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/manifests/1.0"
    assert (await _get(wharf, path))[0] == 200
    fake.fault(ANY_PATH, Fault(hang=True))
    await asyncio.sleep(0.2)
    status, _, body = await _get(wharf, path)  # waits one first-byte timeout, opens the circuit
    assert status == 200 and body == image.manifest
    asked = fake.count()
    for _ in range(3):
        status, _, body = await _get(wharf, path)
        assert status == 200 and body == image.manifest
    assert fake.count() == asked
    metrics = await (await wharf.client.get("/metrics")).text()
    assert 'wharf_cache_requests_total{kind="tag",result="stale"} 4.0' in metrics


async def test_refusing_upstream_opens_the_circuit_and_it_closes_when_upstream_is_back(make_wharf):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    wharf = await make_wharf(url, upstream_options=FAST)
    upstream = wharf.upstream_name(url)
    manifest = f"/v2/{upstream}/{REPO}/manifests/1.0"
    for _ in range(2):
        status, _, body = await _get(wharf, manifest)
        assert status == 503 and b"unreachable" in body
    status, _, body = await _get(wharf, manifest)
    assert status == 503 and b"is not answering" in body and b"unreachable" in body

    fake = FakeRegistry()
    image = make_image("back", (10,))
    fake.add_image(REPO, image, tag="1.0")
    server = TestServer(fake.app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        await asyncio.sleep(1.1)
        status, _, body = await _get(wharf, manifest)
        assert status == 200 and body == image.manifest
        assert await _state(wharf, upstream) == CLOSED
    finally:
        await server.close()


async def test_half_open_circuit_lets_one_probe_through(fake_upstream, make_wharf):
    fake = await fake_upstream()
    fake.add_image(REPO, make_image("probe", (10,)), tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options=FAST)
    upstream = wharf.upstream_name(fake.url)
    fake.fault(ANY_PATH, Fault(hang=True))
    for tag in ("a", "b"):
        await _get(wharf, f"/v2/{upstream}/{REPO}/manifests/{tag}")
    await asyncio.sleep(1.1)
    asked = fake.count()
    answers = await asyncio.gather(*(_get(wharf, f"/v2/{upstream}/{REPO}/manifests/p{i}") for i in range(4)))
    assert [status for status, _, _ in answers] == [503] * 4
    assert fake.count() == asked + 1, "more than one probe went to a half-open upstream"
    assert await _state(wharf, upstream) == OPEN  # the probe failed: open for another cool-down


async def test_5xx_answers_count_and_back_off_does_not(fake_upstream, make_wharf):
    fake = await fake_upstream()
    fake.add_image(REPO, make_image("5xx", (10,)), tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options={**FAST, "circuit_failures": 1})
    upstream = wharf.upstream_name(fake.url)
    fake.fault(ANY_PATH, Fault(status=503, headers={"Retry-After": "1"}))  # back off: a rate limit
    assert (await _get(wharf, f"/v2/{upstream}/{REPO}/manifests/a"))[0] == 503
    assert await _state(wharf, upstream) == CLOSED
    await asyncio.sleep(1.1)
    fake.fault(ANY_PATH, Fault(status=502))
    assert (await _get(wharf, f"/v2/{upstream}/{REPO}/manifests/b"))[0] == 503
    assert await _state(wharf, upstream) == OPEN
