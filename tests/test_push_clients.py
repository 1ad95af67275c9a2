"""Real clients push into Wharf's embedded registry and pull back byte-identical content.

- skopeo: OCI layout -> Wharf, then repository -> repository inside Wharf (cross-repo mounts);
- dockerd: ``docker load`` + ``docker push`` (chunked PATCH bodies), then ``docker pull`` back;
- containerd: ``ctr images import`` + ``ctr images push``;
- python ``oras``: an artifact whose ``subject`` is a pushed image; the referrers API lists it.

Daemons and the helpers that run clients come from ``test_clients_e2e`` (private containerd and
dockerd per module, loopback only). Wharf here is a pure local registry (no upstream).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import tarfile
import uuid
from pathlib import Path

import pytest

from support.images import (MANIFEST_ACCEPT, OCI_INDEX, Image, canonical_json, make_image, push_image,
                            sha256_digest)
from support.servers import require_binary
from test_clients_e2e import client_env, clients_dir, containerd, dockerd, run, skopeo_files  # noqa: F401

pytestmark = pytest.mark.clients


def host_of(wharf) -> str:
    return wharf.url.split("://", 1)[1]


def summary(wharf) -> str:
    return "\n".join(f"{s.method} {s.path} {s.query} -> {s.status}" for s in wharf.seen[-60:])


def creds(wharf) -> str:
    """``admin:TOKEN``, the form skopeo's ``--creds`` and ctr's ``--user`` take."""
    return ":".join(wharf.admin)


async def docker_login(docker: str, host: str, account: tuple[str, str], env: dict[str, str],
                       diagnostics=None) -> str:
    """``docker login HOST -u NAME --password-stdin`` (Docker's token flow), the token on stdin."""
    return await run([docker, "login", host, "-u", account[0], "--password-stdin"], env,
                     diagnostics=diagnostics, stdin=account[1].encode())


def write_oci_layout(directory: Path, image: Image, ref_name: str, image_name: str | None = None) -> None:
    """An OCI image layout holding ``image`` under ``ref_name`` (and containerd's image name)."""
    (directory / "blobs" / "sha256").mkdir(parents=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for digest, data in {**image.blobs, image.digest: image.manifest}.items():
        (directory / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    annotations = {"org.opencontainers.image.ref.name": ref_name}
    if image_name:
        annotations["io.containerd.image.name"] = image_name
    (directory / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest),
                       "annotations": annotations}]}))


async def assert_served(wharf, repo: str, reference: str, image: Image) -> None:
    resp = await wharf.client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200, summary(wharf)
    assert await resp.read() == image.manifest
    assert resp.headers["Docker-Content-Digest"] == image.digest
    for digest, data in image.blobs.items():
        resp = await wharf.client.get(f"/v2/{repo}/blobs/{digest}")
        assert resp.status == 200
        assert await resp.read() == data


async def test_skopeo_copy_in_and_across_repositories_with_mounts(make_wharf, repo_name, clients_dir, tmp_path):
    skopeo = require_binary("skopeo")
    wharf = await make_wharf()
    host = host_of(wharf)
    env = client_env(clients_dir / "home")
    options = skopeo_files(clients_dir)
    image = make_image(f"{repo_name}:skopeo", (4000, 300_000), oci=True)
    layout = tmp_path / "layout"
    write_oci_layout(layout, image, "1.0")

    await run([skopeo, *options, "copy", "--dest-tls-verify=false", "--dest-creds", creds(wharf), f"oci:{layout}:1.0",
               f"docker://{host}/{repo_name}:1.0"], env, diagnostics=lambda: summary(wharf))
    await assert_served(wharf, repo_name, "1.0", image)

    other = f"{repo_name}-copy"
    await run([skopeo, *options, "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
               "--src-creds", creds(wharf), "--dest-creds", creds(wharf),
               f"docker://{host}/{repo_name}:1.0", f"docker://{host}/{other}:2.0"], env,
              diagnostics=lambda: summary(wharf))
    mounts = [s for s in wharf.seen if s.method == "POST" and s.path == f"/v2/{other}/blobs/uploads/"
              and s.query.get("from") == repo_name and s.status == 201]
    layers = set(image.layer_digests)
    assert {s.query["mount"] for s in mounts} == layers, summary(wharf)  # skopeo re-sends only the config
    uploaded = {s.query.get("digest") for s in wharf.seen if s.method == "PUT" and s.path.startswith(f"/v2/{other}/blobs/")}
    assert not uploaded & layers
    await assert_served(wharf, other, "2.0", image)

    dest = tmp_path / "back"
    await run([skopeo, *options, "copy", "--src-tls-verify=false", "--src-creds", creds(wharf),
               f"docker://{host}/{other}:2.0", f"dir:{dest}"], env)
    assert (dest / "manifest.json").read_bytes() == image.manifest
    for digest, data in image.blobs.items():
        assert (dest / digest.split(":")[1]).read_bytes() == data


def docker_archive(repo_tag: str, seed: str) -> tuple[bytes, str]:
    """A ``docker save`` style tarball with one uncompressed layer; returns (tar, image id)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        content = hashlib.sha256(seed.encode()).digest() * 20_000  # 640 KB
        info = tarfile.TarInfo(f"data/{uuid.uuid4().hex}.bin")
        info.size, info.mtime, info.mode = len(content), 1_700_000_000, 0o644
        tar.addfile(info, io.BytesIO(content))
    layer_bytes = layer.getvalue()
    config = canonical_json({"architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
                             "config": {"Cmd": ["/bin/true"], "Labels": {"seed": seed}},
                             "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer_bytes)]},
                             "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "wharf test"}]})
    config_name = sha256_digest(config).split(":")[1] + ".json"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in ((config_name, config), ("layer/layer.tar", layer_bytes),
                           ("manifest.json", json.dumps([{"Config": config_name, "RepoTags": [repo_tag],
                                                          "Layers": ["layer/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive.getvalue(), sha256_digest(config)


async def test_dockerd_push_with_chunked_bodies_and_pull_back(make_wharf, repo_name, clients_dir, dockerd,
                                                              tmp_path):
    docker = require_binary("docker")
    wharf = await make_wharf()
    # this test's login state only, never ~/.docker
    env = client_env(clients_dir / "home", DOCKER_HOST=dockerd.host, DOCKER_CONFIG=str(tmp_path / "docker-config"))
    ref = f"{host_of(wharf)}/{repo_name}:1"
    archive, image_id = docker_archive(ref, repo_name)
    (tmp_path / "image.tar").write_bytes(archive)

    def diagnostics() -> str:
        return f"Wharf saw:\n{summary(wharf)}\n--- dockerd log ---\n{dockerd.daemon.log_tail()}"

    await run([docker, "load", "-i", str(tmp_path / "image.tar")], env, diagnostics=diagnostics)
    await docker_login(docker, host_of(wharf), wharf.admin, env, diagnostics)
    output = await run([docker, "push", ref], env, diagnostics=diagnostics)
    pushed_digest = re.search(r"digest: (sha256:[0-9a-f]{64})", output).group(1)

    patches = [s for s in wharf.seen if s.method == "PATCH" and s.status == 202]
    assert patches and all(s.request_headers.get("Transfer-Encoding") == "chunked" for s in patches), summary(wharf)
    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    manifest = await resp.read()
    assert sha256_digest(manifest) == pushed_digest
    assert json.loads(manifest)["config"]["digest"] == image_id
    for layer in json.loads(manifest)["layers"]:
        data = await (await wharf.client.get(f"/v2/{repo_name}/blobs/{layer['digest']}")).read()
        assert sha256_digest(data) == layer["digest"] and len(data) == layer["size"]

    await run([docker, "rmi", ref], env, diagnostics=diagnostics)
    await run([docker, "pull", "-q", ref], env, diagnostics=diagnostics)
    assert (await run([docker, "image", "inspect", "--format", "{{.Id}}", ref], env)).strip() == image_id
    repo_digest = (await run([docker, "image", "inspect", "--format", "{{index .RepoDigests 0}}", ref], env)).strip()
    assert repo_digest.endswith(f"@{pushed_digest}")
    await run([docker, "rmi", ref], env)


async def test_ctr_push(make_wharf, repo_name, clients_dir, containerd, tmp_path):
    ctr = require_binary("ctr")
    wharf = await make_wharf()
    env = client_env(clients_dir / "home")
    base = [ctr, "--address", str(containerd), "--namespace", f"wharf-push-{uuid.uuid4().hex[:8]}"]
    image = make_image(f"{repo_name}:ctr", (2000, 200_000), oci=True)
    ref = f"{host_of(wharf)}/{repo_name}:1.0"
    layout = tmp_path / "layout"
    write_oci_layout(layout, image, "1.0", ref)
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)

    await run([*base, "images", "import", "--no-unpack", str(archive)], env)
    await run([*base, "images", "push", "--plain-http", "--user", creds(wharf), ref], env,
              diagnostics=lambda: summary(wharf))
    await assert_served(wharf, repo_name, "1.0", image)
    assert any(s.method == "PUT" and "/blobs/uploads/" in s.path and s.status == 201 for s in wharf.seen)


async def test_oras_push_artifact_with_subject_then_referrers(make_wharf, repo_name, tmp_path):
    oras_provider = pytest.importorskip("oras.provider", reason="python oras (PyPI) is a test dependency: pip install oras")
    import oras.oci

    wharf = await make_wharf()
    image = make_image(f"{repo_name}:subject", (1000,), oci=True)
    await push_image(wharf.url, repo_name, image, tag="app")
    sbom = tmp_path / "sbom.json"
    sbom.write_text(json.dumps({"spdxVersion": "SPDX-2.3", "name": repo_name}))
    config = tmp_path / "config.json"
    config.write_text("{}")
    artifact_type = "application/vnd.example.sbom.v1+json"
    target = f"{host_of(wharf)}/{repo_name}:sbom"

    def push() -> None:
        client = oras_provider.Registry(hostname=host_of(wharf), insecure=True)
        client.auth.set_basic_auth(*wharf.admin)  # oras's -u/-p
        client.push(target=target, files=[f"{sbom}:application/spdx+json"],
                    manifest_config=f"{config}:{artifact_type}", disable_path_validation=True,
                    subject=oras.oci.Subject(image.media_type, image.digest, len(image.manifest)),
                    do_chunked=True, chunk_size=64)

    await asyncio.to_thread(push)
    resp = await wharf.client.get(f"/v2/{repo_name}/manifests/sbom", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200
    artifact = await resp.read()
    assert json.loads(artifact)["subject"]["digest"] == image.digest

    resp = await wharf.client.get(f"/v2/{repo_name}/referrers/{image.digest}")
    referrers = (await resp.json())["manifests"]
    assert [(r["digest"], r["artifactType"]) for r in referrers] == [(sha256_digest(artifact), artifact_type)]
    resp = await wharf.client.get(f"/v2/{repo_name}/referrers/{image.digest}",
                                  params={"artifactType": "application/other"})
    assert (await resp.json())["manifests"] == []

    out = tmp_path / "pulled"

    def pull() -> list[str]:
        client = oras_provider.Registry(hostname=host_of(wharf), insecure=True)
        client.auth.set_basic_auth(*wharf.admin)
        return client.pull(target=target, outdir=str(out))

    files = await asyncio.to_thread(pull)
    assert [Path(f).read_bytes() for f in files] == [sbom.read_bytes()]
