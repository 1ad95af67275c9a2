"""``GET /api/cache/stats``: the figures move with real pulls; image names only for those who may
pull them (anonymous callers and ordinary users never see a privately cached image's or a private
package's name; server admins see all)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from support.accounts import add_token, add_user, basic
from support.pulls import private_fill_and_public_fill, pull_through, until
from support.images import basic_auth_header, make_image, push_image

ALICE = basic_auth_header(("alice", "alice-pw"))


async def _stats(wharf, headers: dict[str, str] | None = None) -> dict:
    async with aiohttp.ClientSession() as session:  # no default Authorization: as the caller is
        async with session.get(wharf.url + "/api/cache/stats", headers=headers or {}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "application/json"
            return await resp.json()






def _user(wharf, name: str) -> dict[str, str]:
    """An ordinary (not admin) account with every scope; its Authorization header."""
    add_user(wharf.database, name)
    _, secret = add_token(wharf.database, name)
    return {"Authorization": basic(name, secret)}


async def _settled_stats(wharf, field: str, value: int) -> dict:
    """The stats once ``totals[field]`` reached ``value``: a blob's bytes are counted by its
    handler as they leave, which may finish a moment after the client read the last of them."""
    for _ in range(50):
        stats = await _stats(wharf)
        if stats["totals"][field] >= value:
            return stats
        await asyncio.sleep(0.1)
    return stats


async def test_figures_move_after_real_pulls(registry_upstream, make_wharf, repo_name):
    image = make_image("stats", (5000, 60_000))
    await push_image(registry_upstream, repo_name, image, tag="1.0")
    wharf = await make_wharf(registry_upstream, auth=None)
    layer_bytes = sum(len(layer.data) for layer in image.layers)

    before = await _stats(wharf)
    assert before["totals"]["hits"] == before["totals"]["misses"] == 0
    assert before["totals"]["hit_ratio"] is None
    assert [u["name"] for u in before["upstreams"]] == [wharf.upstream_name(registry_upstream)]
    assert before["upstreams"][0]["circuit"] == "closed"

    await pull_through(wharf, registry_upstream, repo_name, "1.0", image)
    first = await _settled_stats(wharf, "bytes_from_upstream", layer_bytes)
    assert first["totals"]["hits"] == 0 and first["totals"]["misses"] == 3  # the tag and two blobs
    assert first["totals"]["hit_ratio"] == 0
    assert first["totals"]["bytes_from_upstream"] == layer_bytes
    assert first["totals"]["bytes_from_cache"] == 0
    assert first["totals"]["upstream_requests"] >= 3

    await pull_through(wharf, registry_upstream, repo_name, "1.0", image)
    second = await _settled_stats(wharf, "bytes_from_cache", layer_bytes)
    totals = second["totals"]
    assert totals["hits"] == 3 and totals["misses"] == 3 and totals["hit_ratio"] == 0.5
    assert totals["bytes_from_cache"] == layer_bytes and totals["bytes_from_upstream"] == layer_bytes
    assert totals["upstream_requests_saved"] == 3
    assert totals["upstream_requests"] == first["totals"]["upstream_requests"], "a hit asked upstream"
    assert totals["by_kind"]["blob"] == {"hits": 2, "misses": 2}
    assert second["store"]["cached_bytes"] >= layer_bytes
    assert second["store"]["budget_bytes"] == 50 * 2**30
    assert second["history"][-1]["hits"] == 3 and second["history"][-1]["bytes_from_cache"] == layer_bytes
    assert second["window"]["hits"] >= 0 and second["window"]["since"] <= second["generated_at"]


async def test_quota_and_its_reset_are_shown(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("quota-stats", (100,))
    fake.add_image("team/app", image, tag="1.0")
    fake.set_ratelimit(limit=100, remaining=42, window=3600)
    wharf = await make_wharf(fake.url, auth=None)
    await pull_through(wharf, fake.url, "team/app", "1.0", image)
    upstream, = (await _stats(wharf))["upstreams"]
    assert upstream["limit"] == 100 and upstream["remaining"] == 41  # the manifest GET spent one
    assert 3500 < upstream["resets_at"] - time.time() <= 3600
    assert upstream["blocked_until"] is None


async def test_fills_in_flight_with_progress_names_only_for_who_may_pull(fake_upstream, make_wharf):
    wharf, pulls, private_digest, public_digest = await private_fill_and_public_fill(fake_upstream, make_wharf)
    bob = _user(wharf, "bob")

    async def two_fills_under_way():
        stats = await _stats(wharf, wharf.admin_headers)
        fills = stats["fills"]
        return stats if len(fills) == 2 and all(f["size"] and 0 < f["bytes"] < f["size"] for f in fills) else None

    admin_view = await until(two_fills_under_way, "two fills with progress")
    anonymous_text = json.dumps(await _stats(wharf))
    bob_text = json.dumps(await _stats(wharf, bob))
    try:
        by_repo = {f["repository"]: f for f in admin_view["fills"]}
        assert set(by_repo) == {"secret/payroll", "open/tools"}
        assert by_repo["secret/payroll"]["digest"] == private_digest and by_repo["secret/payroll"]["size"] == 300_000
        for text in (anonymous_text, bob_text):
            view = json.loads(text)
            assert len(view["fills"]) == 2, "the count of fills is for everyone"
            assert "payroll" not in text and private_digest not in text
            assert "open/tools" in text and public_digest in text
            hidden, = [f for f in view["fills"] if f["hidden"]]
            assert hidden["repository"] is None and hidden["size"] == 300_000
    finally:
        await asyncio.gather(*pulls)
    assert (await _stats(wharf))["fills"] == []


async def test_a_privately_cached_image_is_named_to_admins_only(auth_registry_upstream, make_wharf,
                                                                           repo_name, registry_upstream, tmp_path):
    secret_repo = f"{repo_name}-payroll"
    private = make_image("evicted-private", (30_000, 30_000))
    await push_image(auth_registry_upstream.url, secret_repo, private, tag="v1", auth=auth_registry_upstream.auth)
    public = make_image("evicted-public", (30_000,))
    await push_image(registry_upstream, repo_name, public, tag="v1")
    wharf = await make_wharf(auth_registry_upstream.url, registry_upstream, auth=None,
                             storage={"root": str(tmp_path / "store"), "max_cache_bytes": 40_000},
                             cache={"access_flush_interval": 0.2})
    bob = _user(wharf, "bob")
    await pull_through(wharf, auth_registry_upstream.url, secret_repo, "v1", private, auth_registry_upstream.headers)
    await pull_through(wharf, registry_upstream, repo_name, "v1", public)

    async def evicted():
        stats = await _stats(wharf, wharf.admin_headers)
        listed = {i["repository"] for i in stats["largest"]} & {i["repository"] for i in stats["most_pulled"]}
        return stats if stats["totals"]["evictions"] >= 2 and len(stats["evictions"]) >= 2 \
            and {secret_repo, repo_name} <= listed else None

    admin_view = await until(evicted, "evictions under the 40 kB budget, both images in the lists")
    private_scope = f"{wharf.upstream_name(auth_registry_upstream.url)}/{secret_repo}"
    admin_text = json.dumps(admin_view)
    assert private_scope in admin_text
    private_digests = {layer.digest for layer in private.layers}
    assert {e["digest"] for e in admin_view["evictions"]} & private_digests
    assert admin_view["store"]["cached_bytes"] <= 40_000
    for headers in ({}, bob):
        view = await _stats(wharf, headers)
        text = json.dumps(view)
        assert secret_repo not in text, "a privately cached repository's name leaked"
        assert not private_digests & {e["digest"] for e in view["evictions"]}
        assert len(view["evictions"]) == len(admin_view["evictions"])
        assert view["totals"]["evictions"] == admin_view["totals"]["evictions"]
        assert [i["repository"] for i in view["most_pulled"]] == [repo_name]  # the public one is for everyone
        assert any(e["hidden"] and e["size"] in {len(layer.data) for layer in private.layers}
                   for e in view["evictions"])


async def test_a_bad_credential_is_401_as_on_the_rest_of_the_api(make_wharf, registry_upstream):
    wharf = await make_wharf(registry_upstream, auth=None)
    async with aiohttp.ClientSession() as session:
        async with session.get(wharf.url + "/api/cache/stats",
                               headers={"Authorization": basic("admin", "wharf_pat_wrong")}) as resp:
            assert resp.status == 401
            assert "message" in await resp.json()
