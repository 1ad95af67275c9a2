"""Upstream timeouts: connect, first byte (response headers) and between body reads, apart."""

from __future__ import annotations

import asyncio

from support.fake_upstream import ANY_PATH, Fault
from support.images import make_image

from proxy.config import UpstreamConfig

REPO = "team/app"


async def test_upstream_that_never_sends_headers_fails_at_the_first_byte_timeout(fake_upstream, make_wharf):
    """read_timeout is between body reads; it no longer lets a hung upstream hold a pull."""
    fake = await fake_upstream()
    fake.add_image(REPO, make_image("hung", (10,)), tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options={"first_byte_timeout": 0.5, "read_timeout": 60})
    fake.fault(ANY_PATH, Fault(hang=True))
    resp = await asyncio.wait_for(
        wharf.client.get(f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/manifests/1.0"), timeout=30)
    assert resp.status == 503
    error = (await resp.json())["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert "sent no response within 0.5s" in error["message"]


async def test_a_body_that_trickles_is_not_cut_by_the_first_byte_timeout(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("slow", (3000,))
    fake.add_image(REPO, image, tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options={"first_byte_timeout": 0.6, "read_timeout": 5})
    layer = image.layers[0]
    fake.fault(fake.blob_path(REPO, layer.digest), Fault(bytes_per_second=3000))  # about a second
    resp = await wharf.client.get(f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/blobs/{layer.digest}")
    assert resp.status == 200 and await resp.read() == layer.data


def test_default_timeouts_fail_an_uncached_request_within_15_seconds():
    config = UpstreamConfig(name="hub", url="https://registry-1.docker.io")
    assert config.connect_timeout + config.first_byte_timeout <= 15
    assert config.first_byte_timeout <= 15 and config.read_timeout >= config.first_byte_timeout
