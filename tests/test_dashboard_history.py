"""The dashboard's history (``proxy.registry.history``): samples of Wharf's own counters that
accumulate, survive a restart, stay within ``web.history_hours``, and are taken by one process
of the store when several workers run."""

from __future__ import annotations

import asyncio

from proxy.http.keys import CACHE_HISTORY, CONFIG
from proxy.registry.history import figures
from support.pulls import pull_through, until
from support.images import make_image, push_image

FAST = {"sample_seconds": 1, "history_hours": 0.5}  # 1800 samples at most: sampled every second






def _latest(samples: list[dict]) -> dict:
    return figures(samples[-1]["counters"]) if samples else {}


async def test_samples_accumulate_what_pulls_did(registry_upstream, make_wharf, repo_name):
    image = make_image("history", (3000, 50_000))
    await push_image(registry_upstream, repo_name, image, tag="1.0")
    wharf = await make_wharf(registry_upstream, web=FAST)
    history = wharf.app[CACHE_HISTORY]
    layer_bytes = sum(len(layer.data) for layer in image.layers)

    await pull_through(wharf, registry_upstream, repo_name, "1.0", image)  # misses: from upstream
    await pull_through(wharf, registry_upstream, repo_name, "1.0", image)  # hits: from the store

    async def counted():
        samples = await history.samples()
        shown = _latest(samples)
        return samples if shown.get("bytes_from_cache", 0) >= layer_bytes else None

    samples = await until(counted, "a sample with the second pull in it")
    shown = _latest(samples)
    assert shown["bytes_from_upstream"] >= layer_bytes and shown["bytes_from_cache"] >= layer_bytes
    assert shown["by_kind"]["blob"] == {"hits": 2, "misses": 2}
    assert 0 < shown["hit_ratio"] < 1
    assert shown["upstream_requests"] >= 3 and shown["upstream_requests_saved"] >= 2
    assert samples[-1]["store"]["cached_bytes"] >= layer_bytes
    assert samples[-1]["store"]["budget_bytes"] == wharf.app[CONFIG].storage.max_cache_bytes
    # cumulative: no point falls below the one before
    hits = [figures(s["counters"])["hits"] for s in samples]
    assert hits == sorted(hits) and len(samples) >= 2


async def test_history_survives_a_restart_and_keeps_counting(registry_upstream, make_wharf, repo_name, tmp_path):
    image = make_image("restart", (4000,))
    await push_image(registry_upstream, repo_name, image, tag="1.0")
    options = {"storage": {"root": str(tmp_path / "store")}, "web": FAST}
    first = await make_wharf(registry_upstream, **options)
    await pull_through(first, registry_upstream, repo_name, "1.0", image)
    await pull_through(first, registry_upstream, repo_name, "1.0", image)

    async def with_hits(wharf, at_least: int):
        async def check():
            samples = await wharf.app[CACHE_HISTORY].samples()
            return samples if _latest(samples).get("hits", 0) >= at_least else None
        return check

    before = await until(await with_hits(first, 2), "a sample of the first process")
    hits_before = _latest(before)["hits"]
    await first.client.close()  # the process stops

    second = await make_wharf(registry_upstream, **options)
    kept = await second.app[CACHE_HISTORY].samples()
    assert [s["at"] for s in kept[:len(before)]] == [s["at"] for s in before], "the samples were lost"
    await pull_through(second, registry_upstream, repo_name, "1.0", image)  # all hits now
    after = await until(await with_hits(second, hits_before + 2), "a sample of the restarted process")
    assert len(after) > len(before)
    assert _latest(after)["hits"] >= hits_before + 2, "counting started again from zero"
    assert _latest(after)["bytes_from_cache"] > _latest(before)["bytes_from_cache"]


async def test_history_keeps_only_the_last_history_hours(registry_upstream, make_wharf):
    keep = 0.001 * 3600  # 3.6 s
    wharf = await make_wharf(registry_upstream, web={"sample_seconds": 1, "history_hours": 0.001})
    history = wharf.app[CACHE_HISTORY]
    first = await until(history.samples, "a first sample")

    async def first_dropped():
        samples = await history.samples()
        return samples if samples and samples[0]["at"] > first[0]["at"] else None

    samples = await until(first_dropped, "the first sample to age out")
    newest = samples[-1]["at"]
    assert all(newest - s["at"] <= keep for s in samples)
    assert len(samples) <= keep / 1 + 1


async def test_one_sampler_counts_every_worker(fake_upstream, make_wharf, tmp_path):
    fake = await fake_upstream()
    image = make_image("workers-history", (7000, 9000))
    fake.add_image("team/app", image, tag="1.0")
    common = {"storage": {"root": str(tmp_path / "store")}, "workers": 2, "web": FAST}
    workers = [await make_wharf(fake.url, **common), await make_wharf(fake.url, **common)]
    histories = [w.app[CACHE_HISTORY] for w in workers]

    async def one_sampling():
        return sum(h.sampling for h in histories) == 1

    await until(one_sampling, "one worker to take the sampler")
    await asyncio.sleep(1.5)  # both had their chance to take the lock again
    assert [h.sampling for h in histories].count(True) == 1
    idle = workers[[h.sampling for h in histories].index(False)]
    await pull_through(idle, fake.url, "team/app", "1.0", image)  # through the worker that does not sample
    layer_bytes = sum(len(layer.data) for layer in image.layers)

    async def counted():
        samples = await histories[0].samples()
        return samples if _latest(samples).get("bytes_from_upstream", 0) >= layer_bytes else None

    samples = await until(counted, "the other worker's pull in a sample")
    shown = _latest(samples)
    assert shown["bytes_from_upstream"] == layer_bytes, "a worker's bytes were counted twice or not at all"
    assert shown["by_kind"]["blob"]["misses"] == 2
    gaps = [b["at"] - a["at"] for a, b in zip(samples, samples[1:])]
    assert all(gap >= 0.9 for gap in gaps), f"two samplers wrote: {gaps}"


async def test_a_long_history_sampled_often_is_sampled_less_often(make_wharf, registry_upstream):
    from proxy.registry.history import MAX_SAMPLES

    wharf = await make_wharf(registry_upstream, web={"sample_seconds": 1, "history_hours": 168})
    assert wharf.app[CACHE_HISTORY].sample_seconds == 168 * 3600 / MAX_SAMPLES
    resp = await wharf.client.get("/api/cache/stats")
    assert (await resp.json())["sample_seconds"] == 168 * 3600 / MAX_SAMPLES
