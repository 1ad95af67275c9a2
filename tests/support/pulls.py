"""Pulling an image through Wharf the way a client does, and waiting for what a background task
writes (the dashboard's samples, the cache index)."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp

from support.fake_upstream import Fault
from support.images import MANIFEST_ACCEPT, basic_auth_header


async def pull_through(wharf, upstream_url: str, repo: str, tag: str, image, headers: dict | None = None) -> None:
    """The manifest by tag, then every layer, through Wharf from ``upstream_url``; byte-exact."""
    name = f"{wharf.upstream_name(upstream_url)}/{repo}"
    resp = await wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT, **(headers or {})})
    assert resp.status == 200 and await resp.read() == image.manifest
    for layer in image.layers:
        resp = await wharf.client.get(f"/v2/{name}/blobs/{layer.digest}", headers=headers or {})
        assert resp.status == 200 and await resp.read() == layer.data


async def until(condition, what: str, timeout: float = 30.0, every: float = 0.1):
    """Poll ``condition()`` (async) until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(every)


async def private_fill_and_public_fill(fake_upstream, make_wharf):
    """A fake upstream with a private repository (pulled with alice's credential) and a public
    one, each with a slow blob; both fills started: (wharf, the two pulls' tasks, private digest,
    public digest). Await the tasks before the test ends."""
    fake = await fake_upstream()
    fake.require_bearer(users={"alice": "alice-pw"}, private={"secret/payroll"})
    private, public = os.urandom(300_000), os.urandom(300_000)
    private_digest = fake.add_blob("secret/payroll", private)
    public_digest = fake.add_blob("open/tools", public)
    for repo, digest in (("secret/payroll", private_digest), ("open/tools", public_digest)):
        fake.fault(fake.blob_path(repo, digest), Fault(bytes_per_second=100_000))
    wharf = await make_wharf(fake.url, auth=None)
    prefix = wharf.upstream_name(fake.url)

    async def get(repo: str, digest: str, headers: dict) -> bytes:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{wharf.url}/v2/{prefix}/{repo}/blobs/{digest}", headers=headers) as resp:
                assert resp.status == 200
                return await resp.read()

    pulls = [asyncio.ensure_future(get("secret/payroll", private_digest, basic_auth_header(("alice", "alice-pw")))),
             asyncio.ensure_future(get("open/tools", public_digest, {}))]
    return wharf, pulls, private_digest, public_digest
