"""Attacks with big upstream manifests.

- A manifest over about 64 kB (thousands of layers, or a big index) was read with one
  ``read(n)``, which returns what has arrived so far: Wharf answered ``502 upstream manifest was
  truncated`` for a manifest upstream sent whole. Bodies are now read to their end.
- A big manifest from upstream (4 MB, 10,000 descriptors: about 0.2 s to hash and parse) was
  checked on the event loop, where a pushed one is not. Anyone can publish such manifests on a
  public registry (one per tag) and ask Wharf for them, each holding every other request for
  that long. Big upstream manifests are now checked in a worker thread.
"""

from __future__ import annotations

import threading

from support.images import MANIFEST_ACCEPT, canonical_json, make_image, sha256_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIGEST = "sha256:" + "a" * 64


def _many_layers(count: int) -> bytes:
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": DIGEST, "size": 2},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": DIGEST, "size": i} for i in range(count)]})


async def test_a_big_upstream_manifest_is_read_whole(fake_upstream, make_wharf):
    fake = await fake_upstream()
    big = _many_layers(5_000)  # ~600 kB: more than one read's worth
    fake.add_manifest("org/big", big, OCI_MANIFEST, tag="v1")
    wharf = await make_wharf(fake.url)
    prefix = wharf.upstream_name(fake.url)
    for reference in ("v1", sha256_digest(big)):
        resp = await wharf.client.get(f"/v2/{prefix}/org/big/manifests/{reference}",
                                      headers={"Accept": MANIFEST_ACCEPT})
        assert resp.status == 200, await resp.text()
        assert await resp.read() == big and resp.headers["Docker-Content-Digest"] == sha256_digest(big)


async def test_a_big_upstream_manifest_is_checked_off_the_event_loop(fake_upstream, make_wharf, monkeypatch):
    from proxy.registry import manifestcache

    checked_in: list[threading.Thread] = []
    check = manifestcache._manifest_media_type

    def recording_check(*args, **kwargs):
        checked_in.append(threading.current_thread())
        return check(*args, **kwargs)

    monkeypatch.setattr(manifestcache, "_manifest_media_type", recording_check)
    fake = await fake_upstream()
    fake.add_image("org/small", make_image("small-upstream", (10,)), tag="v1")
    fake.add_manifest("org/big", _many_layers(5_000), OCI_MANIFEST, tag="v1")
    wharf = await make_wharf(fake.url)
    prefix = wharf.upstream_name(fake.url)
    for repo in ("org/small", "org/big"):
        resp = await wharf.client.get(f"/v2/{prefix}/{repo}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
        assert resp.status == 200, await resp.text()
    loop_thread = threading.current_thread()
    assert checked_in[0] is loop_thread, "a small manifest is checked in place"
    assert checked_in[-1] is not loop_thread, "the big upstream manifest was parsed on the event loop's thread"
