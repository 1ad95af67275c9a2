"""Real clients pull through Wharf's own HTTPS listener, trusting only a CA the test made.

``wharf serve`` runs with ``tls`` on ``[::]:PORT`` (so IPv4 and IPv6 clients reach the same
listener) in front of Debian's docker-registry. Each client is first shown to refuse Wharf's
certificate without the CA (so it really verifies), then given the CA its own way and must end
up with upstream's manifests and blobs, digest for digest:

- containerd (``ctr``): ``hosts.toml`` with ``ca = ...`` under ``--hosts-dir``;
- skopeo: ``--src-cert-dir`` for pulls, ``--dest-cert-dir`` for a push into a local-only Wharf;
- dockerd: ``/etc/docker/certs.d/<host:port>/ca.crt`` for its registry mirror. dockerd skips
  verification for any registry on 127.0.0.0/8, so its mirror is ``https://[::1]:PORT``, the
  one loopback it verifies.

Daemons come from ``test_clients_e2e`` (private containerd per module, loopback only).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from support.ca import TestCA, make_ca
from support.images import ImageIndex, make_image
from support.servers import free_port, has_ipv6_loopback, require_binary
from support.wharf_serve import WharfProcess, add_admin, start_wharf
from test_clients_e2e import (ALIAS, IMAGE_TAG, INDEX_TAG, DockerD, _dockerd_major, assert_dir_copy,  # noqa: F401
                              client_env, clients_dir, containerd, ctr_images, push_pair, run, run_status,
                              skopeo_files, start_daemon, wait_for_socket)

pytestmark = pytest.mark.clients

UNTRUSTED = ("x509", "certificate signed by unknown authority", "unknown authority")
DOCKER_CERTS_D = Path("/etc/docker/certs.d")


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("tls-ca"))


def _tls_config(ca: TestCA, name: str, port: int, root: Path, **extra) -> dict:
    pair = ca.issue(name)
    return {"listen": f"[::]:{port}", "workers": 2, "storage": {"root": str(root)},
            "tls": {"cert": str(pair.cert), "key": str(pair.key)}, "log": {"access_log": True}, **extra}


@pytest.fixture(scope="module")
def tls_wharf(ca, registry_upstream, tmp_path_factory) -> Iterator[WharfProcess]:
    """``wharf serve`` over HTTPS: docker.io (also known as ALIAS) is the session registry and the
    default upstream, as for a cluster's mirror."""
    work = tmp_path_factory.mktemp("tls-wharf")
    config = _tls_config(ca, "wharf", free_port(), work / "data",
                         upstreams=[{"name": "docker.io", "url": registry_upstream, "aliases": [ALIAS]}],
                         default_upstream="docker.io")
    wharf = start_wharf(work, config, context=ca.client_context())
    try:
        yield wharf
    finally:
        wharf.stop()


def _port(wharf: WharfProcess) -> int:
    return int(wharf.url.rpartition(":")[2])


def _refused_for_trust(status, stdout: str, stderr: str) -> None:
    output = stdout + stderr
    assert status not in (0, None), f"succeeded without trusting the CA:\n{output}"
    assert any(word in output for word in UNTRUSTED), f"failed for another reason:\n{output}"


# --- containerd -------------------------------------------------------------------------------

def _hosts_dir(base: Path, host: str, ca: TestCA | None) -> Path:
    (base / host).mkdir(parents=True)
    trust = f'  ca = "{ca.cert}"\n' if ca is not None else ""
    (base / host / "hosts.toml").write_text(
        f'server = "https://{host}"\n\n[host."https://{host}"]\n  capabilities = ["pull", "resolve"]\n{trust}')
    return base


async def test_containerd_pulls_over_https(tls_wharf, ca, registry_upstream, repo_name, clients_dir,
                                           containerd, tmp_path):
    ctr = require_binary("ctr")
    pushed = await push_pair(registry_upstream, repo_name)
    host = f"127.0.0.1:{_port(tls_wharf)}"
    env = client_env(clients_dir / "home")
    base = [ctr, "--address", str(containerd), "--namespace", f"tls-{uuid.uuid4().hex[:8]}"]
    pull = [*base, "images", "pull", "--snapshotter", "native"]
    ref = f"{host}/{ALIAS}/{repo_name}:{IMAGE_TAG}"

    _refused_for_trust(*await run_status([*pull, "--hosts-dir", str(_hosts_dir(tmp_path / "untrusted", host, None)),
                                          ref], env))
    trusted = _hosts_dir(tmp_path / "trusted", host, ca)
    for content, tag, extra in ((pushed.image, IMAGE_TAG, []), (pushed.index, INDEX_TAG, ["--all-platforms"])):
        ref = f"{host}/{ALIAS}/{repo_name}:{tag}"
        await run([*pull, "--hosts-dir", str(trusted), *extra, ref], env, diagnostics=tls_wharf.output)
        assert ctr_images(await run([*base, "images", "ls"], env)).get(ref) == content.digest
        stored = set((await run([*base, "content", "ls", "-q"], env)).split())
        assert set(content.blobs) | set(content.manifests) <= stored


# --- skopeo -------------------------------------------------------------------------------------

def _cert_dir(ca: TestCA, path: Path) -> Path:
    """A containers-style certificate directory: every ``*.crt`` in it is a trusted CA."""
    path.mkdir(parents=True)
    shutil.copyfile(ca.cert, path / "ca.crt")
    return path


async def test_skopeo_pulls_over_https(tls_wharf, ca, registry_upstream, repo_name, clients_dir, tmp_path):
    skopeo = require_binary("skopeo")
    pushed = await push_pair(registry_upstream, repo_name)
    env = client_env(clients_dir / "home")
    options = skopeo_files(clients_dir)
    certs = _cert_dir(ca, tmp_path / "certs")
    wharf_host = f"127.0.0.1:{_port(tls_wharf)}"

    ref = f"docker://{wharf_host}/{ALIAS}/{repo_name}:{IMAGE_TAG}"
    _refused_for_trust(*await run_status([skopeo, *options, "inspect", "--raw", ref], env))
    for content, tag, extra in ((pushed.image, IMAGE_TAG, []), (pushed.index, INDEX_TAG, ["--all"])):
        ref = f"docker://{wharf_host}/{ALIAS}/{repo_name}:{tag}"
        inspected = json.loads(await run([skopeo, *options, "inspect", "--cert-dir", str(certs), ref], env))
        assert inspected["Digest"] == content.digest
        for attempt in ("fill", "stored"):  # the second copy comes from Wharf's store
            dest = tmp_path / f"{tag}-{attempt}"
            await run([skopeo, *options, "copy", *extra, "--src-cert-dir", str(certs), ref, f"dir:{dest}"], env,
                      diagnostics=tls_wharf.output)
            assert_dir_copy(dest, content)


async def test_skopeo_pushes_over_https(ca, repo_name, clients_dir, tmp_path):
    """Into a local-only Wharf (``--dest-cert-dir``), then back out (``--src-cert-dir``)."""
    skopeo = require_binary("skopeo")
    env = client_env(clients_dir / "home")
    options = skopeo_files(clients_dir)
    certs = _cert_dir(ca, tmp_path / "certs")
    image = make_image(f"{repo_name}:tls-push", (3000, 400_000), oci=True)
    wharf = start_wharf(tmp_path / "wharf", _tls_config(ca, "local", free_port(), tmp_path / "data",
                                                        upstreams=[], default_upstream=None),
                        context=ca.client_context())
    try:
        creds = ":".join(add_admin(wharf.url, wharf.config_path))
        source = tmp_path / "source"
        source.mkdir()
        (source / "manifest.json").write_bytes(image.manifest)
        (source / "version").write_text("Directory Transport Version: 1.1\n")
        for digest, data in image.blobs.items():
            (source / digest.split(":", 1)[1]).write_bytes(data)
        dest = f"docker://127.0.0.1:{_port(wharf)}/{repo_name}:1.0"
        _refused_for_trust(*await run_status([skopeo, *options, "copy", "--dest-creds", creds, f"dir:{source}",
                                              dest], env))
        await run([skopeo, *options, "copy", "--dest-cert-dir", str(certs), "--dest-creds", creds, f"dir:{source}",
                   dest], env, diagnostics=wharf.output)
        back = tmp_path / "back"
        await run([skopeo, *options, "copy", "--src-cert-dir", str(certs), "--src-creds", creds, dest,
                   f"dir:{back}"], env, diagnostics=wharf.output)
        assert_dir_copy(back, image)
    finally:
        wharf.stop()


# --- dockerd ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_dockerd(clients_dir: Path, containerd: Path, tls_wharf: WharfProcess) -> Iterator[DockerD]:
    """dockerd whose only registry mirror is Wharf's HTTPS listener at ``[::1]`` (no insecure
    registries); it looks for the mirror's CA in /etc/docker/certs.d on every connection."""
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1): dockerd verifies no registry on 127.0.0.0/8, so it cannot be tried")
    binary = require_binary("dockerd")
    require_binary("docker")
    work = clients_dir / "tls-docker"
    for sub in ("root", "exec"):
        (work / sub).mkdir(parents=True)
    socket_path = work / "docker.sock"
    port = _port(tls_wharf)
    settings = {
        "data-root": str(work / "root"), "exec-root": str(work / "exec"),
        "pidfile": str(work / "docker.pid"), "hosts": [f"unix://{socket_path}"],
        "containerd": str(containerd), "storage-driver": "vfs",
        "iptables": False, "ip6tables": False, "bridge": "none", "shutdown-timeout": 1,
        "registry-mirrors": [f"https://[::1]:{port}"],
    }
    if _dockerd_major(binary) < 23:
        settings["deprecated-key-path"] = str(work / "key.json")
    config = work / "daemon.json"
    config.write_text(json.dumps(settings, indent=2))
    daemon = start_daemon("dockerd", [binary, "--config-file", str(config)], work,
                          client_env(clients_dir / "home", NO_PROXY="127.0.0.1,localhost,::1",
                                     no_proxy="127.0.0.1,localhost,::1"))
    try:
        wait_for_socket(daemon, socket_path, b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n", b"OK")
        yield DockerD(f"unix://{socket_path}", port, daemon)
    finally:
        daemon.stop()


async def test_dockerd_pulls_through_an_https_mirror(tls_wharf, tls_dockerd, ca, registry_upstream, clients_dir):
    docker = require_binary("docker")
    name = f"wharf-tls-{uuid.uuid4().hex[:10]}"
    pushed = await push_pair(registry_upstream, f"someorg/{name}")
    env = client_env(clients_dir / "home", DOCKER_HOST=tls_dockerd.host)
    short = f"someorg/{name}"

    def diagnostics() -> str:
        return f"--- wharf ---\n{tls_wharf.output()}\n--- dockerd log ---\n{tls_dockerd.daemon.log_tail()}"

    certs = DOCKER_CERTS_D / f"[::1]:{tls_dockerd.mirror_port}"
    assert not certs.exists()
    # without the CA the mirror is refused; the fallback (Docker Hub) is unreachable from here, so
    # a pull that succeeds came through Wharf
    status, stdout, stderr = await run_status([docker, "pull", "-q", f"{short}:{IMAGE_TAG}"], env)
    assert status not in (0, None), stdout + stderr
    assert any(word in tls_dockerd.daemon.log_tail(20000) for word in UNTRUSTED), diagnostics()
    created = [d for d in (DOCKER_CERTS_D.parent, DOCKER_CERTS_D) if not d.exists()]  # removed again after
    certs.mkdir(parents=True)
    try:
        shutil.copyfile(ca.cert, certs / "ca.crt")
        for content, tag in ((pushed.image, IMAGE_TAG), (pushed.index, INDEX_TAG)):
            ref = f"{short}:{tag}"
            await run([docker, "pull", "-q", ref], env, diagnostics=diagnostics)
            repo_digest = (await run([docker, "image", "inspect", "--format", "{{index .RepoDigests 0}}", ref],
                                     env)).strip()
            assert repo_digest == f"{short}@{content.digest}"
            amd64 = content.image_for("amd64") if isinstance(content, ImageIndex) else content
            image_id = (await run([docker, "image", "inspect", "--format", "{{.Id}}", ref], env)).strip()
            assert image_id == amd64.config.digest
        ref = f"{short}:{IMAGE_TAG}"  # removed and pulled again: the layers now come from Wharf's store
        await run([docker, "rmi", ref], env)
        await run([docker, "pull", "-q", ref], env, diagnostics=diagnostics)
        assert (await run([docker, "image", "inspect", "--format", "{{.Id}}", ref], env)).strip() == \
            pushed.image.config.digest
    finally:
        shutil.rmtree(certs)
        for directory in reversed(created):
            directory.rmdir()
