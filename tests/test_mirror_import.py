"""``wharf mirror import``: every digest verified before anything is visible, deltas need their
base, interrupted imports resume, twice is a no-op; other tools' OCI archives and ``docker save``
tarballs import too.

The importing Wharf's upstreams carry the exporting side's names but point at a port where nothing
listens: whatever it serves came from the bundle.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from support.bundles import (SavedImage, blob_members, config_of, docker_save_classic, docker_save_oci, image_config,
                             layer_tar, member_bytes, members, mirror_into, one_line, rewrite_member, sha256,
                             upstream_name, wharf_cli, wharf_config)
from support.images import MANIFEST_ACCEPT, OCI_MANIFEST, canonical_json, make_image, make_index, push_manifest, \
    sha256_digest
from support.servers import _die_with_parent
from support.wharf_serve import wharf_argv, wharf_env, write_config
from test_clients_e2e import client_env, clients_dir, require_binary, run, skopeo_files  # noqa: F401 (a fixture)

from proxy.app import BLOBS, META
from proxy.http import keys
from proxy.mirror.bundle import BundleError
from proxy.mirror.export import export_bundle, select_all
from proxy.mirror.importer import import_bundle
from proxy.mirror.records import IMPORT_HOLDER, MirroredImage
from proxy.oci.digest import Digest

DEAD = "http://127.0.0.1:9"  # nothing listens there: a request upstream fails


async def far_side(make_wharf, *names: str, **overrides):
    """A fresh Wharf whose upstreams have these names and cannot be reached."""
    return await make_wharf(named_upstreams={name: DEAD for name in names}, **overrides)


async def assert_served(wharf, name: str, tag: str, content) -> None:
    """``wharf`` serves the tag and every manifest and blob of ``content`` byte for byte."""
    async with wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.read() == content.manifest
        assert resp.headers["Docker-Content-Digest"] == content.digest
    for digest, data in content.blobs.items():
        async with wharf.client.get(f"/v2/{name}/blobs/{digest}") as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.read() == data


def tag_record(wharf, scope: str, tag: str):
    return wharf.app[META].tag(scope, tag, fresh=True)


def assert_nothing_visible(wharf, scope: str, *tags: str) -> None:
    for tag in tags:
        assert tag_record(wharf, scope, tag) is None, tag
    assert wharf.app[keys.MIRROR_RECORDS].images(IMPORT_HOLDER) == {}
    assert wharf.app[keys.MIRROR_RECORDS].mirrored_tags(scope) == []


async def exported(wharf, path, **options):
    records = wharf.app[keys.MIRROR_RECORDS]
    await export_bundle(records, wharf.app[BLOBS], select_all(records), path, **options)
    return path


async def test_import_full_then_again_is_a_no_op(registry_upstream, make_wharf, repo_name, tmp_path):
    """A bundle's images come back as they were mirrored: tags, a platform subset's left-out
    child, a referrer; imported by the CLI beside the running server, and a second time nothing."""
    near = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    seed = uuid.uuid4().hex
    image = make_image(f"full-{seed}", (4000, 50_000), oci=True)
    await mirror_into(near, registry_upstream, f"{repo_name}/img", image, ["v1", "latest"])
    # a signature-like referrer of the image
    signature = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.test.sig",
                                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                           "digest": sha256_digest(b"{}")},
                                "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest,
                                                          "size": len(image.manifest)}})
    from support.images import push_blob
    import aiohttp
    async with aiohttp.ClientSession() as session:
        await push_blob(session, registry_upstream, f"{repo_name}/img", b"{}")
        await push_manifest(session, registry_upstream, f"{repo_name}/img", sha256_digest(signature), signature,
                            OCI_MANIFEST)
    name = f"{host}/{repo_name}/img"
    for path in (f"manifests/{sha256_digest(signature)}", f"blobs/{sha256_digest(b'{}')}"):
        async with near.client.get(f"/v2/{name}/{path}", headers={"Accept": MANIFEST_ACCEPT}) as resp:
            assert resp.status == 200
    # a platform subset of an index: arm64 left out
    index = make_index(f"full-multi-{seed}", (3000,), oci=True)
    await mirror_into(near, registry_upstream, f"{repo_name}/multi", index, ["v1"])
    records = near.app[keys.MIRROR_RECORDS]
    amd64, arm64 = index.image_for("amd64"), index.image_for("arm64")
    subset = MirroredImage(f"{host}/{repo_name}/multi", host, f"{repo_name}/multi", {"v1": index.digest},
                           {index.digest: index.media_type, amd64.digest: amd64.media_type},
                           {d: len(b) for d, b in amd64.blobs.items()},
                           unmirrored={arm64.digest: "platform linux/arm64 is not in mirror list testlist"})
    referred = records.images("testlist")[name]
    referred.manifests[sha256_digest(signature)] = OCI_MANIFEST
    referred.blobs[sha256_digest(b"{}")] = 2
    referrer = {"mediaType": OCI_MANIFEST, "digest": sha256_digest(signature), "size": len(signature),
                "artifactType": "application/vnd.test.sig"}
    referred.referrers = {image.digest: [referrer]}
    records.forget_image("testlist", subset.name)
    records.adopt(subset, "testlist")
    records.adopt(referred, "testlist")
    bundle = await exported(near, tmp_path / "bundle.tar")

    far = await far_side(make_wharf, host)
    cli = config_of(far, tmp_path / "far")
    result = wharf_cli("mirror", "import", str(bundle), "--config", str(cli))
    assert result.status == 0, result.stderr
    assert "3 tag(s) made visible" in result.stdout, result.stdout
    await assert_served(far, name, "v1", image)
    await assert_served(far, name, "latest", image)
    await assert_served(far, f"{host}/{repo_name}/multi", "v1", type(index)(index.manifest, index.digest,
                                                                             index.media_type, (amd64,)))
    imported = far.app[keys.MIRROR_RECORDS].images(IMPORT_HOLDER)
    for original in (subset, referred):
        again = imported[original.name]
        assert (again.tags, again.manifests, again.blobs, again.referrers, again.unmirrored) == \
            (original.tags, original.manifests, original.blobs, original.referrers, original.unmirrored)
    meta = far.app[META]
    assert meta.unmirrored(arm64.digest) == "platform linux/arm64 is not in mirror list testlist"
    assert meta.document(f"referrers:{host}/{repo_name}/img:{image.digest}") == [referrer]
    assert all(meta.is_kept(d) for d in image.blobs)
    assert not [h for d in image.blobs for h in meta.keepers(d) if h != IMPORT_HOLDER]  # the pending holder let go

    again = wharf_cli("mirror", "import", str(bundle), "--config", str(cli))
    assert again.status == 0, again.stderr
    assert "nothing new" in again.stdout, again.stdout


async def test_import_delta_needs_its_base(registry_upstream, make_wharf, repo_name, tmp_path):
    near = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    name, scope = f"{host}/{repo_name}", f"{host}/{repo_name}"
    v1 = make_image(f"base-{uuid.uuid4().hex}", (20_000, 30_000), oci=True)
    await mirror_into(near, registry_upstream, repo_name, v1, ["v1"])
    full = await exported(near, tmp_path / "full.tar.zst", compression="zstd")
    v2 = make_image(f"next-{uuid.uuid4().hex}", (25_000,), oci=True)
    await mirror_into(near, registry_upstream, repo_name, v2, ["v2"])
    base = json.loads(member_bytes(tmp_path / "full.tar.zst", "wharf-bundle.json"))
    delta = await exported(near, tmp_path / "delta.tar", base=set(base["inventory"]), base_id=base["id"])
    assert blob_members(delta) == set(v2.blobs) | {v2.digest}

    far = await far_side(make_wharf, host)
    assert (await import_bundle(far.app, full)).visible == [f"{name}:v1"]
    report = await import_bundle(far.app, delta)
    assert report.visible == [f"{name}:v2"] and report.imported == 3
    await assert_served(far, name, "v1", v1)
    await assert_served(far, name, "v2", v2)

    # without its base: refused before anything of it is stored, naming the base and what is missing
    elsewhere = await far_side(make_wharf, host)
    with pytest.raises(BundleError) as refused:
        await import_bundle(elsewhere.app, delta)
    message = str(refused.value)
    assert base["id"] in message and f"{len(v1.blobs) + 1} manifest(s) or blob(s) missing" in message
    assert any(d in message for d in [v1.digest, *v1.blobs])
    assert_nothing_visible(elsewhere, scope, "v1", "v2")
    assert not any(elsewhere.app[BLOBS].size(Digest.parse(d)) for d in blob_members(delta))
    result = wharf_cli("mirror", "import", str(delta), "--config", str(config_of(elsewhere, tmp_path / "cli")))
    one_line(result, 1, base["id"], "missing")


async def test_corrupted_blob_refused_nothing_visible(registry_upstream, make_wharf, repo_name, tmp_path):
    near = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    image = make_image(f"corrupt-{uuid.uuid4().hex}", (6000, 40_000), oci=True)
    await mirror_into(near, registry_upstream, repo_name, image, ["v1"])
    bundle = await exported(near, tmp_path / "bundle.tar")
    victim = image.layer_digests[1]
    damaged = tmp_path / "damaged.tar"
    rewrite_member(bundle, damaged, f"blobs/sha256/{victim[7:]}", lambda data: data[:100] + bytes([data[100] ^ 1]) + data[101:])

    far = await far_side(make_wharf, host)
    with pytest.raises(BundleError) as refused:
        await import_bundle(far.app, damaged)
    assert victim in str(refused.value) and "does not match its digest" in str(refused.value)
    assert_nothing_visible(far, f"{host}/{repo_name}", "v1")
    async with far.client.get(f"/v2/{host}/{repo_name}/manifests/{image.digest}",
                              headers={"Accept": MANIFEST_ACCEPT}) as resp:
        assert resp.status != 200  # stored perhaps, but served to nobody
    assert far.app[BLOBS].size(Digest.parse(victim)) is None
    # the undamaged bundle imports afterwards
    assert (await import_bundle(far.app, bundle)).visible == [f"{host}/{repo_name}:v1"]
    await assert_served(far, f"{host}/{repo_name}", "v1", image)


async def test_kill_mid_import_then_resume(registry_upstream, make_wharf, repo_name, tmp_path):
    """kill -9 while a blob streams in: no tag, no served manifest, the partial file only in tmp/;
    the same import run again finishes. The bundle is fed through a FIFO so the kill lands mid-blob."""
    near = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    image = make_image(f"kill-{uuid.uuid4().hex}", (3000, 6 * 1024 * 1024), oci=True)
    await mirror_into(near, registry_upstream, repo_name, image, ["v1"])
    bundle = await exported(near, tmp_path / "bundle.tar")
    import tarfile
    with tarfile.open(bundle) as tar:
        big = tar.getmember(f"blobs/sha256/{image.layer_digests[1][7:]}")
        cut = big.offset_data + big.size // 2
    fifo = tmp_path / "feed.tar"
    os.mkfifo(fifo)
    far = await far_side(make_wharf, host)
    cli = config_of(far, tmp_path / "far")
    store = far.app[keys.CONFIG].storage.root
    process = subprocess.Popen(wharf_argv("mirror", "import", str(fifo), "--config", str(cli)), env=wharf_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)

    def feed() -> None:
        with open(fifo, "wb") as pipe:  # opens once the importer opened its end
            with open(bundle, "rb") as source:
                pipe.write(source.read(cut))
            deadline = time.monotonic() + 60
            while not [p for p in (store / "tmp").glob("*.part") if p.stat().st_size > 0]:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "no partial blob appeared in tmp/"
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            process.wait()

    try:
        await asyncio.to_thread(feed)
    except BrokenPipeError:
        pass
    assert process.returncode == -signal.SIGKILL
    partial = list((store / "tmp").glob("*.part"))
    assert partial and all(p.stat().st_size < big.size for p in partial)
    assert far.app[BLOBS].size(Digest.parse(image.layer_digests[1])) is None
    assert_nothing_visible(far, f"{host}/{repo_name}", "v1")
    async with far.client.get(f"/v2/{host}/{repo_name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT}) as resp:
        assert resp.status != 200
    async with far.client.get(f"/v2/{host}/{repo_name}/manifests/{image.digest}",
                              headers={"Accept": MANIFEST_ACCEPT}) as resp:
        assert resp.status != 200

    result = wharf_cli("mirror", "import", str(bundle), "--config", str(cli))
    assert result.status == 0, result.stderr
    assert "1 tag(s) made visible" in result.stdout, result.stdout
    await assert_served(far, f"{host}/{repo_name}", "v1", image)
    meta = far.app[META]
    assert {h for d in [image.digest, *image.blobs] for h in meta.keepers(d)} == {IMPORT_HOLDER}


def _saved(label: str, *layers: bytes) -> tuple[bytes, list[bytes]]:
    return image_config(list(layers), label), list(layers)


async def test_docker_save_classic(make_wharf, tmp_path):
    """A classic ``docker save`` of two images sharing a layer (saved once, then linked): each gets a
    Docker schema 2 manifest with uncompressed layers, named as Docker names it."""
    seed = uuid.uuid4().hex
    shared, own, other = layer_tar(f"{seed}:shared", 40_000), layer_tar(f"{seed}:own", 9000), layer_tar(f"{seed}:o", 7000)
    alpine = SavedImage(["alpine:3", "alpine:latest"], *_saved("alpine", shared, own))
    tool = SavedImage(["registry.test/team/tool:2"], *_saved("tool", shared, other))
    tarball = tmp_path / "saved.tar"
    docker_save_classic(tarball, [alpine, tool])
    assert any(m.endswith("layer.tar") for m in members(tarball))

    far = await far_side(make_wharf, "docker.io", "registry.test")
    report = await import_bundle(far.app, tarball)
    assert sorted(report.visible) == ["docker.io/library/alpine:3", "docker.io/library/alpine:latest",
                                      "registry.test/team/tool:2"]
    for name, tag, saved in (("docker.io/library/alpine", "3", alpine), ("registry.test/team/tool", "2", tool)):
        async with far.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.read()
            assert resp.headers["Docker-Content-Digest"] == sha256(body)
            assert resp.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
        manifest = json.loads(body)
        assert manifest["config"] == {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "digest": sha256(saved.config), "size": len(saved.config)}
        assert manifest["layers"] == [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                                       "digest": sha256(layer), "size": len(layer)} for layer in saved.layers]
        for data in (saved.config, *saved.layers):
            async with far.client.get(f"/v2/{name}/blobs/{sha256(data)}") as resp:
                assert resp.status == 200 and await resp.read() == data
    first = tag_record(far, "docker.io/library/alpine", "3").digest
    assert (await import_bundle(far.app, tarball)).nothing_new  # the same manifest, built again
    assert tag_record(far, "docker.io/library/alpine", "3").digest == first

    # a layer that is not what the config's diff_ids say is refused
    damaged = tmp_path / "damaged.tar"
    docker_save_classic(damaged, [SavedImage(["alpine:broken"], alpine.config, [shared, other])])
    with pytest.raises(BundleError, match="config says"):
        await import_bundle(far.app, damaged)
    assert tag_record(far, "docker.io/library/alpine", "broken") is None


async def test_docker_save_oci_layout(make_wharf, tmp_path):
    """Docker 25+ saves an OCI layout; the name comes from io.containerd.image.name. An unnamed
    referrer in index.json goes with the image it refers to."""
    seed = uuid.uuid4().hex
    saved = SavedImage(["busybox:1"], *_saved("busybox", layer_tar(f"{seed}:bb", 12_000)))
    tarball = tmp_path / "saved-oci.tar"
    config = image_config(saved.layers, "busybox")
    subject_manifest = docker_save_oci(tmp_path / "probe.tar", "docker.io/library/busybox", "1", saved)
    signature = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.test.sig",
                                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                           "digest": sha256(b"{}")}, "layers": [],
                                "subject": {"mediaType": OCI_MANIFEST, "digest": sha256(subject_manifest),
                                            "size": len(subject_manifest)}})
    manifest = docker_save_oci(tarball, "docker.io/library/busybox", "1", saved, signature)
    assert manifest == subject_manifest and config == saved.config
    far = await far_side(make_wharf, "docker.io")
    report = await import_bundle(far.app, tarball)
    assert report.visible == ["docker.io/library/busybox:1"]
    async with far.client.get("/v2/docker.io/library/busybox/manifests/1", headers={"Accept": MANIFEST_ACCEPT}) as resp:
        assert resp.status == 200 and await resp.read() == manifest
    referrers = far.app[META].document(f"referrers:docker.io/library/busybox:{sha256(manifest)}")
    assert [(r["digest"], r["artifactType"]) for r in referrers] == [(sha256(signature), "application/vnd.test.sig")]
    imported = far.app[keys.MIRROR_RECORDS].images(IMPORT_HOLDER)["docker.io/library/busybox"]
    assert sha256(signature) in imported.manifests


async def test_skopeo_oci_archive_imports(registry_upstream, repo_name, make_wharf, tmp_path, clients_dir):
    """An oci-archive skopeo wrote from the real upstream imports, digests unchanged."""
    skopeo = require_binary("skopeo")
    host = upstream_name(registry_upstream)
    image = make_image(f"skopeo-{uuid.uuid4().hex}", (2000, 60_000), oci=True)
    from support.images import push_image
    await push_image(registry_upstream, repo_name, image, "v1")
    archive = tmp_path / "skopeo.tar"
    await run([skopeo, *skopeo_files(clients_dir), "copy", "--src-tls-verify=false",
               f"docker://{host}/{repo_name}:v1", f"oci-archive:{archive}:{host}/{repo_name}:v1"],
              client_env(clients_dir / "home"))
    far = await far_side(make_wharf, host)
    report = await import_bundle(far.app, archive)
    assert report.visible == [f"{host}/{repo_name}:v1"]
    await assert_served(far, f"{host}/{repo_name}", "v1", image)


async def test_bad_inputs_are_one_line(registry_upstream, make_wharf, repo_name, tmp_path):
    near = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    image = make_image(f"bad-{uuid.uuid4().hex}", (1000,), oci=True)
    await mirror_into(near, registry_upstream, repo_name, image, ["v1"])
    bundle = await exported(near, tmp_path / "bundle.tar.gz", compression="gzip")
    cli = write_config(tmp_path / "cli", wharf_config(tmp_path / "store", {"docker.io": DEAD}))

    (tmp_path / "notes.txt").write_text("not a bundle at all\n" * 100)
    one_line(wharf_cli("mirror", "import", str(tmp_path / "notes.txt"), "--config", str(cli)), 1, "not a bundle")
    one_line(wharf_cli("mirror", "import", str(tmp_path / "absent.tar"), "--config", str(cli)), 1, "absent.tar")
    line = one_line(wharf_cli("mirror", "import", str(bundle), "--config", str(cli)), 1, host, "offline: true")
    assert "no upstream named" in line
    quay = tmp_path / "quay.tar"
    docker_save_classic(quay, [SavedImage(["quay.io/team/app:1"], *_saved("q", layer_tar("quay", 100)))])
    one_line(wharf_cli("mirror", "import", str(quay), "--config", str(cli)), 1, "quay.io", "offline: true")
    plain = await exported(near, tmp_path / "plain.tar")
    import tarfile
    with tarfile.open(plain) as tar:
        last = tar.getmembers()[-1]
    knows_host = write_config(tmp_path / "cli2", wharf_config(tmp_path / "store2", {host: DEAD}))
    for cut in (last.offset_data + last.size // 2, last.offset):  # inside a blob, and a whole file missing
        truncated = tmp_path / f"truncated-{cut}.tar"
        truncated.write_bytes(plain.read_bytes()[:cut])
        one_line(wharf_cli("mirror", "import", str(truncated), "--config", str(knows_host)), 1, "truncated")
    one_line(wharf_cli("mirror", "import", "--config", str(cli)), 2, "BUNDLE")


async def test_import_larger_than_the_cache_budget(registry_upstream, make_wharf, repo_name, tmp_path):
    """What an import stores is kept from its first byte: a bundle larger than the cache budget
    is not evicted from under it before its images are adopted (and then they are kept)."""
    near = await make_wharf(registry_upstream)
    host = upstream_name(registry_upstream)
    image = make_image(f"budget-{uuid.uuid4().hex}", (80_000,) * 6, oci=True)
    await mirror_into(near, registry_upstream, repo_name, image, ["v1"])
    bundle = await exported(near, tmp_path / "bundle.tar")
    far = await make_wharf(named_upstreams={host: DEAD},
                           storage={"root": str(tmp_path / "far-store"), "max_cache_bytes": 100_000})
    from proxy.app import BUDGET
    # the count of the store at start runs in a thread and sets the totals it finds: let it end first
    await asyncio.to_thread(far.app[BUDGET].counted.wait, 30)
    report = await import_bundle(far.app, bundle)
    assert report.visible == [f"{host}/{repo_name}:v1"]
    await asyncio.to_thread(far.app[BUDGET].wait_idle, 30)
    await assert_served(far, f"{host}/{repo_name}", "v1", image)
    meta = far.app[META]
    assert meta.store_bytes("kept") == sum(len(data) for data in image.blobs.values()) + len(image.manifest)
    assert meta.store_bytes("cached") == 0
