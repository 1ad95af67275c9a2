"""Real clients push images built on cached base content, without uploading that content again.

Wharf mirrors Debian's docker-registry as ``docker.io`` (the default upstream, as for dockerd's
``registry-mirrors``) and keeps local repositories under the ``team/`` namespace. Each client first
pulls an image through Wharf, so its blobs are cached public content, then pushes an image that
reuses those blobs into ``team/…``. The push must succeed, the cached blobs must not be uploaded
again (the client finds them with a HEAD in the target repository and skips them), and pulling
the pushed image back from Wharf gives the same bytes and digests:

- dockerd: ``docker pull <name>:v2`` through the mirror, ``docker build`` ``FROM <name>:v2`` plus a
  ``COPY``, ``docker push <wharf>/team/derived2:1`` ("Layer already exists" for the base layer);
- skopeo: ``copy docker://<wharf>/<name>:v2 docker://<wharf>/team/copy:1`` (every blob cached);
- python ``oras``: an artifact whose file is a layer pulled through Wharf, pushed to ``team/art:1``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import re
import tarfile
import uuid
from pathlib import Path

import pytest

from support.images import (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, MANIFEST_ACCEPT, Blob, Image,
                            canonical_json, make_image, push_image, sha256_digest)
from support.servers import require_binary
from test_clients_e2e import (assert_dir_copy, assert_pulled_through, client_env, clients_dir, containerd,  # noqa: F401
                              dockerd, run, served, skopeo_files)
from test_push_clients import assert_served, creds, docker_login, host_of, summary

pytestmark = pytest.mark.clients

LOCAL = {"local_namespaces": ["team"]}
# dockerd (distribution/push_v2.go) HEADs a layer digest it learned from another repository
# (here the pull from docker.io) only for layers of more than 10 MiB uncompressed; smaller ones it
# uploads again whatever the registry holds. The scenario needs a base layer above that.
DOCKERD_CHECKS_OTHER_REPOS_ABOVE = 10 * 1024 * 1024


async def mirror_wharf(make_wharf, registry_upstream: str, **options):
    """Wharf mirroring the session registry as docker.io, with ``team/`` local."""
    return await make_wharf(named_upstreams={"docker.io": registry_upstream}, default_upstream="docker.io",
                            **LOCAL, **options)


def uploads(wharf, repo: str) -> list:
    """Requests that opened an upload session in ``repo`` or sent it blob bytes (mounts are not uploads)."""
    prefix = f"/v2/{repo}/blobs/uploads/"
    return [s for s in wharf.seen if s.path.startswith(prefix)
            and (s.method in ("PATCH", "PUT") or (s.method == "POST" and s.status == 202))]


def uploaded_digests(wharf, repo: str) -> set[str]:
    """Digests of the blobs whose upload into ``repo`` Wharf completed."""
    return {s.query.get("digest") for s in uploads(wharf, repo) if s.method == "PUT" and s.status == 201}


def found_by_head(wharf, repo: str, digest: str) -> bool:
    return any(s.method == "HEAD" and s.path == f"/v2/{repo}/blobs/{digest}" and s.status == 200 for s in wharf.seen)


def compressible_image(seed: str, size: int) -> Image:
    """A Docker schema 2 image with one layer of ``size`` uncompressed bytes that gzip to a few KiB."""
    content = hashlib.sha256(seed.encode()).digest() * (size // 32 + 1)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo(f"base/{seed}.bin")
        info.size, info.mtime, info.mode = len(content), 1_700_000_000, 0o644
        tar.addfile(info, io.BytesIO(content))
    raw = tar_bytes.getvalue()
    compressed = gzip.compress(raw, mtime=0)
    layer = Blob(compressed, sha256_digest(compressed), DOCKER_LAYER)
    config_json = canonical_json({"architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
                                  "config": {"Cmd": ["/bin/true"]},
                                  "rootfs": {"type": "layers", "diff_ids": [sha256_digest(raw)]},
                                  "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"base {seed}"}]})
    config = Blob(config_json, sha256_digest(config_json), DOCKER_CONFIG)
    manifest = canonical_json({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config.descriptor(),
                               "layers": [layer.descriptor()]})
    return Image(manifest, sha256_digest(manifest), DOCKER_MANIFEST, config, (layer,))


async def test_dockerd_pushes_an_image_built_on_a_base_pulled_through_the_mirror(registry_upstream, make_wharf,
                                                                                 clients_dir, dockerd, tmp_path):
    docker = require_binary("docker")
    wharf = await mirror_wharf(make_wharf, registry_upstream, port=dockerd.mirror_port)
    name = f"wharf-tool-{uuid.uuid4().hex[:10]}"
    base = compressible_image(name, DOCKERD_CHECKS_OTHER_REPOS_ABOVE + 1024 * 1024)
    base_layer = base.layers[0].digest
    await push_image(registry_upstream, f"library/{name}", base, tag="v2")
    # the classic builder: docker 23+ clients build with buildx only, which is not installed
    env = client_env(clients_dir / "home", DOCKER_HOST=dockerd.host, DOCKER_BUILDKIT="0",
                     DOCKER_CONFIG=str(tmp_path / "docker-config"))

    def diagnostics() -> str:
        return f"Wharf saw:\n{summary(wharf)}\n--- dockerd log ---\n{dockerd.daemon.log_tail()}"

    # docker pull tool:v2 through the mirror
    await run([docker, "pull", "-q", f"{name}:v2"], env, diagnostics=diagnostics)
    assert_pulled_through(wharf, f"library/{name}", "v2", base)

    # FROM tool:v2 + one layer (the base has no shell: COPY, no RUN)
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {name}:v2\nCOPY file /file\n")
    (context / "file").write_text(f"derived from {name}\n")
    repo = "team/derived2"
    ref = f"{host_of(wharf)}/{repo}:1"
    await run([docker, "build", "-q", "-t", ref, str(context)], env, diagnostics=diagnostics)
    image_id = (await run([docker, "image", "inspect", "--format", "{{.Id}}", ref], env)).strip()

    await docker_login(docker, host_of(wharf), wharf.admin, env, diagnostics)
    wharf.seen.clear()
    output = await run([docker, "push", ref], env, diagnostics=diagnostics)
    pushed_digest = re.search(r"digest: (sha256:[0-9a-f]{64})", output).group(1)
    diff_id = json.loads(base.config.data)["rootfs"]["diff_ids"][0]
    assert f"{diff_id.split(':')[1][:12]}: Layer already exists" in output, output

    # the base layer was found in team/derived2 and not sent again; the new layer and config were
    resp = await wharf.client.get(f"/v2/{repo}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200, summary(wharf)
    manifest = await resp.read()
    assert sha256_digest(manifest) == pushed_digest
    parsed = json.loads(manifest)
    assert parsed["config"]["digest"] == image_id
    layers = [layer["digest"] for layer in parsed["layers"]]
    assert layers[0] == base_layer and len(layers) == 2
    assert found_by_head(wharf, repo, base_layer), summary(wharf)
    assert uploaded_digests(wharf, repo) == {image_id, layers[1]}, summary(wharf)
    assert len([s for s in uploads(wharf, repo) if s.method == "POST"]) == 2, summary(wharf)

    # pulled back from Wharf, with no layer left in dockerd: the same image, the base layer's bytes
    await run([docker, "rmi", ref, f"{name}:v2"], env, diagnostics=diagnostics)
    wharf.seen.clear()
    await run([docker, "pull", "-q", ref], env, diagnostics=diagnostics)
    assert (await run([docker, "image", "inspect", "--format", "{{.Id}}", ref], env)).strip() == image_id
    repo_digest = (await run([docker, "image", "inspect", "--format", "{{index .RepoDigests 0}}", ref], env)).strip()
    assert repo_digest == f"{host_of(wharf)}/{repo}@{pushed_digest}"
    assert [s for s in served(wharf, f"/v2/{repo}/blobs/{base_layer}") if s.method == "GET"], summary(wharf)
    resp = await wharf.client.get(f"/v2/{repo}/blobs/{base_layer}")
    assert resp.status == 200 and await resp.read() == base.layers[0].data
    await run([docker, "rmi", ref], env)


async def test_skopeo_copies_a_cached_image_into_a_local_repository_without_uploads(registry_upstream, make_wharf,
                                                                                    clients_dir, tmp_path):
    skopeo = require_binary("skopeo")
    wharf = await mirror_wharf(make_wharf, registry_upstream)
    host = host_of(wharf)
    name = f"wharf-tool-{uuid.uuid4().hex[:10]}"
    image = make_image(name, (3000, 60_000))
    await push_image(registry_upstream, f"library/{name}", image, tag="v2")
    env = client_env(clients_dir / "home")
    options = skopeo_files(clients_dir)

    # pulled through the mirror: every blob is now cached
    await run([skopeo, *options, "copy", "--src-tls-verify=false", f"docker://{host}/{name}:v2",
               f"dir:{tmp_path / 'pulled'}"], env, diagnostics=lambda: summary(wharf))
    assert_dir_copy(tmp_path / "pulled", image)

    repo = "team/copy"
    wharf.seen.clear()
    await run([skopeo, *options, "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
               "--dest-creds", creds(wharf), f"docker://{host}/{name}:v2", f"docker://{host}/{repo}:1"], env,
              diagnostics=lambda: summary(wharf))
    assert not uploads(wharf, repo), summary(wharf)
    assert all(found_by_head(wharf, repo, digest) for digest in image.blobs), summary(wharf)
    await assert_served(wharf, repo, "1", image)

    await run([skopeo, *options, "copy", "--src-tls-verify=false", "--src-creds", creds(wharf),
               f"docker://{host}/{repo}:1", f"dir:{tmp_path / 'back'}"], env, diagnostics=lambda: summary(wharf))
    assert_dir_copy(tmp_path / "back", image)


async def test_oras_pushes_an_artifact_whose_file_is_a_cached_layer(registry_upstream, make_wharf, tmp_path):
    oras_provider = pytest.importorskip("oras.provider", reason="python oras (PyPI) is a test dependency: pip install oras")
    wharf = await mirror_wharf(make_wharf, registry_upstream)
    host = host_of(wharf)
    name = f"wharf-tool-{uuid.uuid4().hex[:10]}"
    image = make_image(name, (50_000,), oci=True)
    layer = image.layers[0]
    await push_image(registry_upstream, f"library/{name}", image, tag="v2")
    pulled = tmp_path / "layer.tar.gz"

    def pull_layer() -> dict:
        client = oras_provider.Registry(hostname=host, insecure=True)
        manifest = client.get_manifest(f"{host}/{name}:v2")
        client.download_blob(f"{host}/{name}:v2", manifest["layers"][0]["digest"], str(pulled))
        return manifest

    # the layer, pulled through the mirror, is now cached
    assert (await asyncio.to_thread(pull_layer))["layers"][0]["digest"] == layer.digest
    assert pulled.read_bytes() == layer.data

    repo = "team/art"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"artifact": name}))
    config_type = "application/vnd.example.tool.config.v1+json"
    file_type = "application/vnd.example.tool.bundle.v1.tar+gzip"  # not OCI's layer type: oras would unpack it

    def push() -> None:
        client = oras_provider.Registry(hostname=host, insecure=True)
        client.auth.set_basic_auth(*wharf.admin)  # oras's -u/-p
        client.push(target=f"{host}/{repo}:1", files=[f"{pulled}:{file_type}"],
                    manifest_config=f"{config}:{config_type}", disable_path_validation=True)

    wharf.seen.clear()
    await asyncio.to_thread(push)
    assert found_by_head(wharf, repo, layer.digest), summary(wharf)
    assert uploaded_digests(wharf, repo) == {sha256_digest(config.read_bytes())}, summary(wharf)
    assert len([s for s in uploads(wharf, repo) if s.method == "POST"]) == 1, summary(wharf)
    resp = await wharf.client.get(f"/v2/{repo}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200
    artifact = json.loads(await resp.read())
    assert [(d["digest"], d["size"]) for d in artifact["layers"]] == [(layer.digest, layer.size)]
    assert artifact["config"]["mediaType"] == config_type

    out = tmp_path / "back"

    def pull() -> list[str]:
        client = oras_provider.Registry(hostname=host, insecure=True)
        client.auth.set_basic_auth(*wharf.admin)
        return client.pull(target=f"{host}/{repo}:1", outdir=str(out))

    files = await asyncio.to_thread(pull)
    assert [Path(f).read_bytes() for f in files] == [layer.data]
