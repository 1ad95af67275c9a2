"""Air gap end to end: sync a mirror list from a real upstream, export it, import it into a Wharf that
cannot reach any upstream, and pull with skopeo (path prefix), containerd's ``ctr`` (``?ns=``) and
dockerd (``registry-mirrors``): the digests are upstream's. Then one new tag upstream, a second
sync, a delta export and import: only the new content travels.

The connected side is ``wharf mirror sync|export`` on its own store (no server); the air-gapped
side is a running Wharf whose upstreams point at a closed port and are ``offline: true``, and the
bundle is imported into its store while it serves (``wharf mirror import``).
"""

from __future__ import annotations

import json
import tarfile
import uuid
from pathlib import Path

import pytest

from support.images import MANIFEST_ACCEPT, make_image, push_image
from support.mirror import push_mirror_set, write_list
from support.servers import require_binary
from support.wharf_serve import wharf_argv, wharf_env, write_config
from test_clients_e2e import (DEAD_PROXY, assert_dir_copy, client_env, clients_dir, containerd,  # noqa: F401
                              ctr_images, dockerd, run, skopeo_files, summary)

pytestmark = pytest.mark.clients

HOST = "registry.test"
CLOSED = "http://127.0.0.1:9"  # nothing listens on discard: an upstream that cannot be reached


async def wharf_command(*args: str) -> str:
    """``wharf …`` as a subprocess without blocking the loop the offline Wharf serves on."""
    return await run(wharf_argv(*args), wharf_env(), timeout=180)


def _config(root: Path, upstream_url: str, offline: bool) -> dict:
    return {"storage": {"root": str(root)}, "log": {"access_log": False}, "offline": offline,
            "upstreams": [{"name": HOST, "url": upstream_url}, {"name": "docker.io", "url": upstream_url}],
            "default_upstream": "docker.io"}


def _bundle_blobs(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {"sha256:" + name.rsplit("/", 1)[1] for name in tar.getnames() if name.startswith("blobs/sha256/")}


async def test_sync_export_import_offline_pull_and_delta(registry_upstream, make_wharf, clients_dir, containerd,
                                                         dockerd, tmp_path):
    skopeo, ctr, docker = require_binary("skopeo"), require_binary("ctr"), require_binary("docker")
    prefix = f"air-{uuid.uuid4().hex[:8]}"
    pushed = await push_mirror_set(registry_upstream, prefix, sizes=(2048, 120_000))
    hub_image = make_image(f"{prefix}-hub", (1500, 90_000))
    await push_image(registry_upstream, f"{prefix}/hub", hub_image, tag="v1")

    # the connected side: sync and export --------------------------------------------------------
    connected = write_config(tmp_path / "connected", _config(tmp_path / "connected" / "store", registry_upstream,
                                                             offline=False))
    listing = write_list(tmp_path / "site.yaml", [
        {"name": f"{HOST}/{prefix}/img", "semver": ">=1.0.0 <2", "referrers": True},
        {"name": f"{HOST}/{prefix}/multi", "tags": ["v1"], "platforms": ["linux/amd64"]},
        {"name": f"docker.io/{prefix}/hub", "tags": ["v1"]},
    ])
    await wharf_command("mirror", "sync", str(listing), "--config", str(connected))
    bundle = tmp_path / "site.tar"
    await wharf_command("mirror", "export", str(listing), "-o", str(bundle), "--config", str(connected))
    arm64 = pushed.index.image_for("arm64")
    carried = _bundle_blobs(bundle)
    assert pushed.index.digest in carried and arm64.digest not in carried
    assert not set(arm64.blobs) & carried  # only the mirrored platform travels

    # the air-gapped side: a running Wharf that cannot reach any upstream --------------------------
    gapped_root = tmp_path / "gapped" / "store"
    gapped = write_config(tmp_path / "gapped", _config(gapped_root, CLOSED, offline=True))
    wharf = await make_wharf(storage={"root": str(gapped_root)}, offline=True, default_upstream="docker.io",
                             named_upstreams={HOST: CLOSED, "docker.io": CLOSED}, port=dockerd.mirror_port)
    resp = await wharf.client.get(f"/v2/{HOST}/{prefix}/img/manifests/v1.0.0", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 404 and "offline" in (await resp.text())
    await wharf_command("mirror", "import", str(bundle), "--config", str(gapped))
    ready = await (await wharf.client.get("/readyz")).json()
    assert "offline" in json.dumps(ready)

    env = client_env(clients_dir / "home")
    wharf_host = wharf.url.split("://", 1)[1]
    # skopeo by path prefix, the image with its semver tags and the platform subset of the index
    for tag in ("v1.0.0", "v1.2.0", "v1.3.1"):
        dest = tmp_path / f"skopeo-{tag}"
        await run([skopeo, *skopeo_files(clients_dir), "copy", "--src-tls-verify=false",
                   f"docker://{wharf_host}/{HOST}/{prefix}/img:{tag}", f"dir:{dest}"], env,
                  diagnostics=lambda: summary(wharf))
        assert_dir_copy(dest, pushed.images[tag])
    inspect = json.loads(await run([skopeo, *skopeo_files(clients_dir), "inspect", "--raw", "--tls-verify=false",
                                    f"docker://{wharf_host}/{HOST}/{prefix}/multi:v1"], env))
    assert [m["digest"] for m in inspect["manifests"]] == [i.digest for i in pushed.index.images]
    resp = await wharf.client.get(f"/v2/{HOST}/{prefix}/multi/manifests/{arm64.digest}",
                                  headers={"Accept": MANIFEST_ACCEPT})
    body = await resp.text()
    assert resp.status == 404 and "MANIFEST_UNKNOWN" in body and "not mirrored" in body
    # the signature travelled: the referrers API lists it
    resp = await wharf.client.get(f"/v2/{HOST}/{prefix}/img/referrers/{pushed.images['v1.0.0'].digest}")
    assert [m["digest"] for m in (await resp.json())["manifests"]] == [pushed.signature.digest]

    # containerd: ?ns=registry.test, the amd64 image of the sparse index
    hosts_dir = tmp_path / "certs.d" / HOST
    hosts_dir.mkdir(parents=True)
    (hosts_dir / "hosts.toml").write_text(
        f'server = "{CLOSED}"\n\n[host."{wharf.url}"]\n  capabilities = ["pull", "resolve"]\n')
    base = [ctr, "--address", str(containerd), "--namespace", f"gap-{uuid.uuid4().hex[:8]}"]
    ref = f"{HOST}/{prefix}/multi:v1"
    await run([*base, "images", "pull", "--hosts-dir", str(tmp_path / "certs.d"), "--snapshotter", "native",
               "--platform", "linux/amd64", ref], env, diagnostics=lambda: summary(wharf))
    assert ctr_images(await run([*base, "images", "ls"], env)).get(ref) == pushed.index.digest
    assert [s for s in wharf.seen if s.query.get("ns") == HOST and s.status == 200]

    # dockerd: registry-mirrors, the default upstream docker.io
    docker_env = client_env(clients_dir / "home", DOCKER_HOST=dockerd.host)
    await run([docker, "pull", "-q", f"{prefix}/hub:v1"], docker_env, diagnostics=lambda: summary(wharf))
    repo_digest = (await run([docker, "image", "inspect", "--format", "{{index .RepoDigests 0}}",
                              f"{prefix}/hub:v1"], docker_env)).strip()
    assert repo_digest == f"{prefix}/hub@{hub_image.digest}"
    assert not [s for s in wharf.seen if s.status >= 500], summary(wharf)

    # one new tag upstream: a second sync, a delta export, a delta import ---------------------------
    new = make_image(f"{prefix}-img-v1.5.0", (2048, 100_000))
    await push_image(registry_upstream, f"{prefix}/img", new, tag="v1.5.0")
    await wharf_command("mirror", "sync", str(listing), "--config", str(connected))
    delta = tmp_path / "site-delta.tar"
    await wharf_command("mirror", "export", str(listing), "--since", str(bundle), "-o", str(delta),
                        "--config", str(connected))
    assert _bundle_blobs(delta) == set(new.blobs) | {new.digest}
    new_bytes = sum(len(data) for data in new.blobs.values()) + len(new.manifest)
    assert new_bytes < delta.stat().st_size < new_bytes + 256 * 1024  # headers, index.json, checksums
    assert delta.stat().st_size < bundle.stat().st_size / 2
    await wharf_command("mirror", "import", str(delta), "--config", str(gapped))
    dest = tmp_path / "skopeo-v1.5.0"
    await run([skopeo, *skopeo_files(clients_dir), "copy", "--src-tls-verify=false",
               f"docker://{wharf_host}/{HOST}/{prefix}/img:v1.5.0", f"dir:{dest}"], env,
              diagnostics=lambda: summary(wharf))
    assert_dir_copy(dest, new)
    tags = await (await wharf.client.get(f"/v2/{HOST}/{prefix}/img/tags/list")).json()
    assert {"v1.0.0", "v1.2.0", "v1.3.1", "v1.5.0"} <= set(tags["tags"])
