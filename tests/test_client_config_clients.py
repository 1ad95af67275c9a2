"""The proof of ``wharf client-config``: the files it prints for a running Wharf, fed as they are to
the real clients, make them pull through that Wharf.

Wharf mirrors two upstreams named as clients name them, ``docker.io`` (the default upstream) and
``ghcr.io``, both served by a real registry (Debian's docker-registry) on 127.0.0.1. Each client
pulls ``docker.io/library/<name>`` and ``ghcr.io/owner/<name>`` (an image and a multi-arch index)
by their usual names, configured only by the generated file:

- skopeo with ``--registries-conf`` and podman with ``CONTAINERS_REGISTRIES_CONF`` (registries.conf:
  the mirror location carries the upstream as a path prefix);
- containerd's ``ctr`` with ``--hosts-dir`` holding the generated ``<registry>/hosts.toml``
  (requests carry ``?ns=<registry>``);
- dockerd started with the generated daemon.json's registry settings (``registry-mirrors`` for
  Docker Hub names; ghcr.io pulled as ``<wharf>/ghcr.io/...`` as the note says).

The files name the upstream registry itself as the client's fallback, so a pull could succeed
without Wharf: every check therefore also asks Wharf's own request log (``assert_pulled_through``)
whether Wharf served the tag, each manifest and each blob.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import tomllib
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from proxy.http.keys import CONFIG
from support.images import ImageIndex
from support.servers import require_binary
from support.wharf_serve import wharf_argv, wharf_env
from test_client_config import _printed_files
from test_clients_e2e import (  # noqa: F401  (clients_dir and containerd are fixtures used below)
    IMAGE_TAG,
    INDEX_TAG,
    Pushed,
    assert_dir_copy,
    assert_pulled_through,
    client_env,
    clients_dir,
    containerd,
    ctr_images,
    push_pair,
    run,
    skopeo_files,
    start_dockerd,
    summary,
)

pytestmark = [pytest.mark.clients, pytest.mark.once]


async def _mirroring_wharf(make_wharf, registry_upstream: str, repo_name: str):
    """Wharf with upstreams docker.io (default) and ghcr.io, and an image pair under each name."""
    wharf = await make_wharf(named_upstreams={"docker.io": registry_upstream, "ghcr.io": registry_upstream},
                             default_upstream="docker.io")
    leaf = repo_name.rsplit("/", 1)[1]
    hub = await push_pair(registry_upstream, f"library/{leaf}")
    ghcr = await push_pair(registry_upstream, f"owner/{leaf}")
    return wharf, leaf, hub, ghcr


async def generated(wharf, client: str, tmp_path: Path) -> dict[str, str]:
    """What ``wharf client-config CLIENT --host <Wharf's host:port> --config <its config>`` prints
    for the running Wharf: {path: file text}."""
    config_path = tmp_path / f"wharf-{uuid.uuid4().hex[:6]}.yaml"
    config_path.write_text(yaml.safe_dump(wharf.app[CONFIG].model_dump(mode="json")))
    output = await run(wharf_argv("client-config", client, "--host", wharf.url.split("://", 1)[1],
                                  "--config", str(config_path)), wharf_env())
    files = _printed_files(output)
    assert files, output
    return files


def _pairs(leaf: str, hub: Pushed, ghcr: Pushed):
    """(reference as users write it, the name Wharf sees after the prefix, the ns, content, tag)."""
    for prefix, repo, pushed in (("docker.io", f"library/{leaf}", hub), ("ghcr.io", f"owner/{leaf}", ghcr)):
        for content, tag in ((pushed.image, IMAGE_TAG), (pushed.index, INDEX_TAG)):
            yield f"{prefix}/{repo}:{tag}", prefix, repo, content, tag


# --- skopeo and podman: registries.conf ------------------------------------------------------------

@pytest.fixture
def podman_state() -> Iterator[Path]:
    """A short directory for podman's state (it refuses a run root longer than 50 characters)."""
    path = Path(tempfile.mkdtemp(prefix="wharf-podman-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_skopeo_pulls_through_wharf_with_the_generated_registries_conf(
        registry_upstream, make_wharf, repo_name, clients_dir, tmp_path):
    skopeo = require_binary("skopeo")
    wharf, leaf, hub, ghcr = await _mirroring_wharf(make_wharf, registry_upstream, repo_name)
    (text,) = (await generated(wharf, "podman", tmp_path)).values()
    options = skopeo_files(clients_dir, text)
    env = client_env(clients_dir / "home")

    for ref, prefix, repo, content, tag in _pairs(leaf, hub, ghcr):
        dest = tmp_path / f"copy-{prefix}-{tag}"
        extra = ["--all"] if isinstance(content, ImageIndex) else []
        await run([skopeo, *options, "copy", *extra, f"docker://{ref}", f"dir:{dest}"], env,
                  diagnostics=lambda: summary(wharf))
        assert_dir_copy(dest, content)
        assert_pulled_through(wharf, f"{prefix}/{repo}", tag, content)


async def test_podman_pulls_through_wharf_with_the_generated_registries_conf(
        registry_upstream, make_wharf, repo_name, clients_dir, podman_state, tmp_path):
    podman = require_binary("podman")
    wharf, leaf, hub, ghcr = await _mirroring_wharf(make_wharf, registry_upstream, repo_name)
    (text,) = (await generated(wharf, "podman", tmp_path)).values()
    conf = tmp_path / "registries.conf"
    conf.write_text(text)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    state = podman_state
    base = [podman, "--root", str(state / "root"), "--runroot", str(state / "run"), "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--tmpdir", str(state / "tmp")]
    env = client_env(clients_dir / "home", CONTAINERS_REGISTRIES_CONF=str(conf),
                     XDG_RUNTIME_DIR=str(state / "xdg"))
    (state / "xdg").mkdir(parents=True)

    for ref, prefix, repo, content, tag in _pairs(leaf, hub, ghcr):
        await run([*base, "pull", "-q", "--signature-policy", str(policy), ref], env,
                  diagnostics=lambda: summary(wharf))
        amd64 = content.image_for("amd64") if isinstance(content, ImageIndex) else content
        inspected = json.loads(await run([*base, "image", "inspect", ref], env))[0]
        assert inspected["Id"] == amd64.config.digest.split(":", 1)[1]
        assert f"{ref.rsplit(':', 1)[0]}@{content.digest}" in inspected["RepoDigests"]
        assert_pulled_through(wharf, f"{prefix}/{repo}", tag, content, "amd64")


# --- containerd: hosts.toml -------------------------------------------------------------------------

async def test_containerd_pulls_through_wharf_with_the_generated_hosts_toml(
        registry_upstream, make_wharf, repo_name, clients_dir, containerd, tmp_path):
    ctr = require_binary("ctr")
    wharf, leaf, hub, ghcr = await _mirroring_wharf(make_wharf, registry_upstream, repo_name)
    hosts_dir = tmp_path / "certs.d"
    files = await generated(wharf, "containerd", tmp_path)
    assert sorted(files) == ["/etc/containerd/certs.d/docker.io/hosts.toml",
                             "/etc/containerd/certs.d/ghcr.io/hosts.toml"]
    for path, text in files.items():  # the path below certs.d, as the operator copies it
        target = hosts_dir / Path(path).relative_to("/etc/containerd/certs.d")
        target.parent.mkdir(parents=True)
        target.write_text(text)
        assert tomllib.loads(text)["server"] == registry_upstream
    env = client_env(clients_dir / "home")
    base = [ctr, "--address", str(containerd), "--namespace", f"wharf-{uuid.uuid4().hex[:8]}"]

    for ref, prefix, repo, content, tag in _pairs(leaf, hub, ghcr):
        extra = ["--all-platforms"] if isinstance(content, ImageIndex) else []
        await run([*base, "images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native", *extra, ref],
                  env, diagnostics=lambda: summary(wharf))
        assert ctr_images(await run([*base, "images", "ls"], env)).get(ref) == content.digest
        assert_pulled_through(wharf, repo, tag, content, ns=prefix)
    asked = [s for s in wharf.seen if s.path.startswith("/v2/")]
    assert asked and all(s.query.get("ns") in ("docker.io", "ghcr.io") for s in asked), summary(wharf)


# --- dockerd: daemon.json ---------------------------------------------------------------------------

async def test_dockerd_pulls_through_wharf_with_the_generated_daemon_json(
        registry_upstream, make_wharf, repo_name, clients_dir, containerd, tmp_path):
    docker = require_binary("docker")
    wharf, leaf, hub, ghcr = await _mirroring_wharf(make_wharf, registry_upstream, repo_name)
    wharf_host = wharf.url.split("://", 1)[1]
    (text,) = (await generated(wharf, "docker", tmp_path)).values()
    settings = json.loads(text)
    assert settings["registry-mirrors"] == [wharf.url]
    # dockerd reads its mirrors at start: started now, with the generated settings as they are
    daemon, docker_host = await asyncio.to_thread(
        start_dockerd, tmp_path / "docker", containerd, clients_dir / "home", settings)
    env = client_env(clients_dir / "home", DOCKER_HOST=docker_host)

    def diagnostics() -> str:
        return f"Wharf saw:\n{summary(wharf)}\n--- dockerd log ---\n{daemon.log_tail()}"

    try:
        # Docker Hub names as users write them, through registry-mirrors; ghcr.io by Wharf's prefix
        hub_refs = [(f"{leaf}:{tag}", leaf, f"library/{leaf}", content, tag)
                    for content, tag in ((hub.image, IMAGE_TAG), (hub.index, INDEX_TAG))]
        ghcr_refs = [(f"{wharf_host}/ghcr.io/owner/{leaf}:{tag}", f"{wharf_host}/ghcr.io/owner/{leaf}",
                      f"ghcr.io/owner/{leaf}", content, tag)
                     for content, tag in ((ghcr.image, IMAGE_TAG), (ghcr.index, INDEX_TAG))]
        for ref, short, name, content, tag in hub_refs + ghcr_refs:
            await run([docker, "pull", "-q", ref], env, diagnostics=diagnostics)
            inspect = [docker, "image", "inspect", "--format"]
            assert (await run([*inspect, "{{index .RepoDigests 0}}", ref], env)).strip() == f"{short}@{content.digest}"
            amd64 = content.image_for("amd64") if isinstance(content, ImageIndex) else content
            assert (await run([*inspect, "{{.Id}}", ref], env)).strip() == amd64.config.digest
            assert_pulled_through(wharf, name, tag, content, "amd64")
    finally:
        await asyncio.to_thread(daemon.stop)
