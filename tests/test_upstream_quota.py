"""Upstream quota and back-off: Wharf's own 429 says when to come back; quota readings lapse
with their window, in this worker and in what it shares with the others."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import pytest

from support.fake_upstream import ANY_PATH, rate_limited
from support.images import make_image

from proxy.upstream.quota import DEFAULT_BLOCK, DEFAULT_WINDOW, RateLimit, parse_quota, parse_retry_after

REPO = "team/app"


async def test_wharfs_own_429_while_upstream_is_blocked_carries_retry_after(fake_upstream, make_wharf):
    fake = await fake_upstream()
    fake.add_image(REPO, make_image("quota", (10,)), tag="1.0")
    wharf = await make_wharf(fake.url)
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    fake.fault(ANY_PATH, rate_limited(retry_after=60))
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
    fake.clear_faults()
    before = fake.count()
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.status == 429
    assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert fake.count() == before


async def test_quota_reading_lapses_with_its_window(fake_upstream, make_wharf, tmp_path):
    """remaining 3 of 100 (w=1) puts Wharf in low-quota mode (stale tags, revalidated in the
    background); once the window has passed and upstream says nothing more, tags are
    revalidated before answering again: a moved tag is seen at once, here and in another worker
    that shares the store."""
    fake = await fake_upstream()
    images = [make_image(f"v{i}", (10,)) for i in range(3)]
    fake.add_image(REPO, images[0], tag="1.0")
    fake.set_ratelimit(limit=100, remaining=4, window=1, enforce=False)
    options = {"upstream_options": {"tag_ttl": 0.1}, "cache": {"low_quota_remaining": 5},
               "storage": {"root": str(tmp_path / "shared-store")}}
    wharf = await make_wharf(fake.url, **options)
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert await resp.read() == images[0].manifest
    metrics = await (await wharf.client.get("/metrics")).text()
    assert f'wharf_upstream_ratelimit_remaining{{upstream="{wharf.upstream_name(fake.url)}"}} 3.0' in metrics

    fake.ratelimit = None  # upstream stops reporting a quota
    await asyncio.sleep(1.2)
    fake.add_image(REPO, images[1], tag="1.0")
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.status == 200 and await resp.read() == images[1].manifest

    other = await make_wharf(fake.url, **options)  # another worker on the same store
    await asyncio.sleep(0.2)
    resp = await other.client.get(f"/v2/{name}/manifests/1.0")  # revalidated: it reads what is shared
    assert resp.status == 200 and await resp.read() == images[1].manifest
    await asyncio.sleep(0.2)
    fake.add_image(REPO, images[2], tag="1.0")
    resp = await other.client.get(f"/v2/{name}/manifests/1.0")
    assert resp.status == 200 and await resp.read() == images[2].manifest


@pytest.mark.parametrize("value, expected", [
    ("100;w=21600", (100, 21600.0)), ("76", (76, None)), (" 5 ; w=60", (5, 60.0)),
    ("0;w=0", (0, None)), ("many", (None, None)), (None, (None, None)),
])
def test_parse_quota(value, expected):
    assert parse_quota(value) == expected


def test_retry_after_is_seconds_or_a_date():
    now = time.time()
    assert parse_retry_after("120", now) == 120
    assert 85 <= parse_retry_after(formatdate(now + 90, usegmt=True), now) <= 90
    assert parse_retry_after("soon", now) == DEFAULT_BLOCK
    assert parse_retry_after(None, now) == DEFAULT_BLOCK


def test_reading_holds_for_its_window_or_the_default():
    rate = RateLimit()
    assert rate.note(200, {"ratelimit-limit": "100;w=3600", "ratelimit-remaining": "7;w=3600"})
    assert (rate.limit, rate.remaining) == (100, 7)
    assert 3590 < rate.expires_at - time.time() <= 3600
    rate.note(200, {"ratelimit-remaining": "6"})
    assert rate.remaining == 6 and rate.limit == 100
    assert DEFAULT_WINDOW - 10 < rate.expires_at - time.time() <= DEFAULT_WINDOW
    rate.expires_at = time.time() - 1
    assert (rate.limit, rate.remaining) == (None, None)
    assert rate.lapse() and not rate.lapse()
    assert not rate.note(200, {})


def test_shared_reading_is_adopted_only_while_it_holds_and_if_newer():
    mine, theirs = RateLimit(), RateLimit()
    theirs.note(200, {"ratelimit-remaining": "2;w=60"})
    value, ttl = theirs.shared()
    assert 55 < ttl <= 60
    mine.adopt(value)
    assert mine.remaining == 2
    mine.note(200, {"ratelimit-remaining": "50;w=60"})
    mine.adopt(value)  # older than ours
    assert mine.remaining == 50
    lapsed = dict(value, read_at=time.time(), expires_at=time.time() - 1)
    fresh = RateLimit()
    fresh.adopt(lapsed)
    assert fresh.remaining is None


def test_block_is_shared_and_the_later_end_wins():
    blocked = RateLimit()
    blocked.note(429, {"retry-after": "60"})
    assert blocked.blocked() and 59 <= blocked.retry_after() <= 60
    other = RateLimit()
    other.adopt(blocked.shared()[0])
    assert other.blocked() and other.retry_after() == blocked.retry_after()
    blocked.note(503, {"retry-after": "5"})  # a shorter block does not shorten the longer one
    assert blocked.retry_after() >= 59
    assert not RateLimit().note(503, {})
