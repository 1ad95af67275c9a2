"""Real image clients pull through Wharf from a real upstream (Debian's docker-registry).

Each client pulls a multi-layer image and a multi-arch index through Wharf; the manifests and
blobs it ends up with must be upstream's, byte for byte and digest for digest, and Wharf's own
request log (``Wharf.seen``) must show that the content came through Wharf rather than by a
client falling back to the upstream directly.

- skopeo: path prefix (``wharf/upstream.test/<repo>``) and a ``registries.conf`` mirror;
- containerd (``ctr``): ``hosts.toml`` under ``--hosts-dir``, so requests carry ``?ns=``;
- dockerd: ``registry-mirrors``, with Wharf's ``docker.io`` upstream pointing at the local registry
  and ``default_upstream: docker.io``.

The reference grammar forbids ``:`` in a path component, so ``wharf:port/127.0.0.1:5001/repo`` is
not a name skopeo, podman or docker accept. For prefix addressing Wharf therefore also knows the
upstream as ``upstream.test``; containerd says ``?ns=127.0.0.1:PORT`` and uses the ``host:port``
name.

The containerd and dockerd daemons are private to this module (own root, state, sockets, all in a
temp dir) and are stopped at the end. Every client runs with ``HTTP(S)_PROXY`` pointing at a closed
loopback port, so nothing can leave 127.0.0.1 even if a client tried a fallback registry.
Client processes run as asyncio subprocesses: Wharf serves from the test's own event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.images import Image, ImageIndex, make_image, make_index, push_image, sha256_digest
from support.servers import ChildProcess, _die_with_parent, free_port, require_binary

pytestmark = pytest.mark.clients

ALIAS = "upstream.test"          # a port-less alias of the upstream, usable as a path prefix
CLIENT_TIMEOUT = 60.0            # one client command
DAEMON_START_TIMEOUT = 30.0
DAEMON_STOP_TIMEOUT = 10.0
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens on discard: a proxied request fails at once
IMAGE_TAG, INDEX_TAG = "1.0", "multi"


# --- running clients --------------------------------------------------------------------------

def client_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for client processes: loopback only, no user config from ``$HOME``."""
    dropped = ("DOCKER_", "CONTAINERD_", "CONTAINERS_", "REGISTRY_")
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and not k.startswith(dropped)}
    env.update({"HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1,localhost",
                "http_proxy": DEAD_PROXY, "https_proxy": DEAD_PROXY, "no_proxy": "127.0.0.1,localhost",
                "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
                "REGISTRY_AUTH_FILE": str(home / "auth.json")})
    env.update(extra)
    return env


async def run_status(argv: list[str], env: dict[str, str], timeout: float = CLIENT_TIMEOUT,
                     stdin: bytes | None = None) -> tuple[int | None, str, str]:
    """Run a client without blocking the loop Wharf serves on: (exit status, stdout, stderr);
    the status is None when it timed out (and was killed)."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), timeout)
    except asyncio.TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
        return None, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


async def run(argv: list[str], env: dict[str, str], timeout: float = CLIENT_TIMEOUT,
              diagnostics: Callable[[], str] | None = None, stdin: bytes | None = None) -> str:
    """Run a client (``stdin``: bytes to feed it); its stdout, or fail with its output (and
    ``diagnostics()``, e.g. a daemon's log and what Wharf saw) if it fails."""
    status, stdout, stderr = await run_status(argv, env, timeout, stdin)
    if status == 0:
        return stdout
    failure = f"timed out after {timeout}s" if status is None else f"exit {status}"
    extra = f"\n--- diagnostics ---\n{diagnostics()}" if diagnostics else ""
    raise AssertionError(f"{failure}: {' '.join(argv)}\n{stdout}{stderr}{extra}")


# --- private daemons ------------------------------------------------------------------------------

@dataclass
class Daemon(ChildProcess):
    """A daemon started by this module."""

    name: str
    process: subprocess.Popen
    log_path: Path
    stop_timeout: float = DAEMON_STOP_TIMEOUT


def start_daemon(name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> Daemon:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    return Daemon(name, process, log_path)


def _unix_answers(path: Path, request: bytes | None, expect: bytes) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            if request is None:
                return True
            sock.sendall(request)
            return expect in sock.recv(4096)
    except OSError:
        return False


def wait_for_socket(daemon: Daemon, path: Path, request: bytes | None = None, expect: bytes = b"") -> None:
    """Poll until the daemon's unix socket accepts (and answers ``request`` with ``expect``)."""
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise RuntimeError(f"{daemon.name} exited with {daemon.process.returncode}:\n{daemon.log_tail()}")
        if _unix_answers(path, request, expect):
            return
        time.sleep(0.1)
    daemon.stop()
    raise RuntimeError(f"{daemon.name} did not answer on {path} in {DAEMON_START_TIMEOUT}s:\n{daemon.log_tail()}")


@pytest.fixture(scope="module")
def clients_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Short paths for sockets (unix socket paths are limited to 108 bytes) and a clean $HOME."""
    path = tmp_path_factory.mktemp("clients")
    (path / "home").mkdir()
    (path / "home" / "auth.json").write_text("{}")
    return path


@pytest.fixture(scope="module")
def containerd(clients_dir: Path) -> Iterator[Path]:
    """A private containerd (no CRI plugin); yields its socket. Killed when the module ends."""
    binary = require_binary("containerd")
    require_binary("ctr")
    work = clients_dir / "containerd"
    for sub in ("root", "state", "opt"):
        (work / sub).mkdir(parents=True)
    socket_path = work / "containerd.sock"
    config = work / "config.toml"
    config.write_text(f"""version = 2
root = "{work / 'root'}"
state = "{work / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket_path}"
[ttrpc]
  address = "{socket_path}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{work / 'opt'}"
""")
    daemon = start_daemon("containerd", [binary, "--config", str(config)], work,
                          client_env(clients_dir / "home"))
    try:
        wait_for_socket(daemon, socket_path)
        yield socket_path
    finally:
        daemon.stop()


@dataclass(frozen=True)
class DockerD:
    """A private dockerd whose only registry mirror is ``http://127.0.0.1:<mirror_port>``."""

    host: str
    mirror_port: int
    daemon: Daemon


def _dockerd_major(binary: str) -> int:
    """``Docker version 20.10.24+dfsg1, build …`` -> 20."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"version (\d+)\.", output)
    return int(match.group(1)) if match else 0


def start_dockerd(work: Path, containerd: Path, home: Path, registry_settings: dict) -> tuple[Daemon, str]:
    """dockerd on ``containerd``, vfs storage, no networking, its state under ``work``, with
    ``registry_settings`` (``registry-mirrors``, ``insecure-registries``) in its daemon.json;
    (the daemon, its DOCKER_HOST) once it answers. Blocks while it starts."""
    binary = require_binary("dockerd")
    require_binary("docker")
    (work / "root").mkdir(parents=True)
    # dockerd binds unix sockets under its exec-root: a path under pytest's (long, per xdist
    # worker) temporary directory can exceed the 108 bytes a socket path may have
    exec_root = Path(tempfile.mkdtemp(prefix="wharf-dockerd-"))
    atexit.register(shutil.rmtree, exec_root, True)
    socket_path = work / "docker.sock"
    settings = {
        "data-root": str(work / "root"), "exec-root": str(exec_root),
        "pidfile": str(work / "docker.pid"), "hosts": [f"unix://{socket_path}"],
        "containerd": str(containerd), "storage-driver": "vfs",
        "iptables": False, "ip6tables": False, "bridge": "none", "shutdown-timeout": 1,
        **registry_settings,
    }
    if _dockerd_major(binary) < 23:  # 20.10 keeps a trust key, by default in /etc/docker/key.json
        settings["deprecated-key-path"] = str(work / "key.json")
    config = work / "daemon.json"
    config.write_text(json.dumps(settings, indent=2))
    daemon = start_daemon("dockerd", [binary, "--config-file", str(config)], work, client_env(home))
    wait_for_socket(daemon, socket_path, b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n", b"OK")
    return daemon, f"unix://{socket_path}"


@pytest.fixture(scope="module")
def dockerd(clients_dir: Path, containerd: Path) -> Iterator[DockerD]:
    """dockerd on the module's containerd, vfs storage, no networking; Wharf must later listen on
    ``mirror_port`` (dockerd reads its mirrors only at start)."""
    mirror_port = free_port()
    daemon, host = start_dockerd(clients_dir / "docker", containerd, clients_dir / "home", {
        "registry-mirrors": [f"http://127.0.0.1:{mirror_port}"],
        "insecure-registries": [f"127.0.0.1:{mirror_port}"],
    })
    try:
        yield DockerD(host, mirror_port, daemon)
    finally:
        daemon.stop()


# --- images and checks ------------------------------------------------------------------------

@dataclass(frozen=True)
class Pushed:
    """An image and an index pushed to the upstream under one repository."""

    repo: str
    image: Image      # Docker schema 2, three layers, tag IMAGE_TAG
    index: ImageIndex  # OCI index over linux/amd64 and linux/arm64, tag INDEX_TAG


async def push_pair(upstream_url: str, repo: str) -> Pushed:
    """Unique content per call (seeded by the repo), so no daemon already holds any of it."""
    image = make_image(f"{repo}:image", (3000, 250_000, 60_000))
    index = make_index(f"{repo}:index", (2000, 150_000), oci=True)
    await push_image(upstream_url, repo, image, tag=IMAGE_TAG)
    await push_image(upstream_url, repo, index, tag=INDEX_TAG)
    return Pushed(repo, image, index)


def served(wharf, path: str, **query: str) -> list:
    """Requests Wharf answered with 200 on ``path`` (and with these query parameters)."""
    return [seen for seen in wharf.seen if seen.path == path and seen.status == 200
            and all(seen.query.get(key) == value for key, value in query.items())]


def metric_value(text: str, sample_name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``, from ``/metrics`` text."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def metrics_text(wharf) -> str:
    resp = await wharf.client.get("/metrics")
    assert resp.status == 200
    return await resp.text()


async def cache_count(wharf, kind: str, result: str) -> float:
    return metric_value(await metrics_text(wharf), "wharf_cache_requests_total", kind=kind, result=result)


def summary(wharf) -> str:
    return "\n".join(f"{s.method} {s.path} {s.query or ''} -> {s.status}" for s in wharf.seen)


def assert_pulled_through(wharf, name: str, tag: str, content: Image | ImageIndex,
                          architecture: str | None = None, **query: str) -> None:
    """Wharf served the tag and every manifest and blob of ``content`` (of one architecture's image
    only, when given) under ``name``, with 200 and these query parameters."""
    images = (content,) if isinstance(content, Image) else content.images
    images = tuple(image for image in images if architecture in (None, image.architecture))
    missing = []
    if not served(wharf, f"/v2/{name}/manifests/{tag}", **query):
        missing.append(f"manifest {tag}")
    for image in images:
        if image is not content and not served(wharf, f"/v2/{name}/manifests/{image.digest}", **query):
            missing.append(f"manifest {image.digest}")
        for digest in image.blobs:
            if not [s for s in served(wharf, f"/v2/{name}/blobs/{digest}", **query) if s.method == "GET"]:
                missing.append(f"blob {digest}")
    assert not missing, f"not served by Wharf: {missing}\nWharf saw:\n{summary(wharf)}"
    errors = [s for s in wharf.seen if s.status >= 500]
    assert not errors, f"Wharf answered 5xx:\n{summary(wharf)}"


def assert_dir_copy(dest: Path, content: Image | ImageIndex) -> None:
    """A skopeo ``dir:`` copy holds upstream's manifests and blobs, byte for byte."""
    assert (dest / "manifest.json").read_bytes() == content.manifest
    assert sha256_digest((dest / "manifest.json").read_bytes()) == content.digest
    if isinstance(content, ImageIndex):
        for child in content.images:
            hex_digest = child.digest.split(":", 1)[1]
            assert (dest / f"{hex_digest}.manifest.json").read_bytes() == child.manifest
    for digest, data in content.blobs.items():
        assert (dest / digest.split(":", 1)[1]).read_bytes() == data, digest


# --- skopeo -----------------------------------------------------------------------------------

def skopeo_files(clients_dir: Path, registries_conf: str = "") -> list[str]:
    """Global skopeo options: our own policy and registries.conf, never /etc/containers'."""
    work = clients_dir / f"skopeo-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    (work / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    (work / "registries.conf").write_text(registries_conf)
    (work / "registries.d").mkdir()
    return ["--policy", str(work / "policy.json"), "--registries-conf", str(work / "registries.conf"),
            "--registries.d", str(work / "registries.d")]


async def test_skopeo_path_prefix(registry_upstream, make_wharf, repo_name, clients_dir, tmp_path):
    skopeo = require_binary("skopeo")
    pushed = await push_pair(registry_upstream, repo_name)
    wharf = await make_wharf(registry_upstream, upstream_options={"aliases": [ALIAS]})
    wharf_host = wharf.url.split("://", 1)[1]
    env = client_env(clients_dir / "home")
    options = skopeo_files(clients_dir)
    name = f"{ALIAS}/{repo_name}"

    for content, tag, extra in ((pushed.image, IMAGE_TAG, []), (pushed.index, INDEX_TAG, ["--all"])):
        ref = f"docker://{wharf_host}/{name}:{tag}"
        raw = await run([skopeo, *options, "inspect", "--raw", "--tls-verify=false", ref], env)
        assert sha256_digest(raw.encode()) == content.digest
        inspected = json.loads(await run([skopeo, *options, "inspect", "--tls-verify=false", ref], env))
        assert inspected["Digest"] == content.digest
        dest = tmp_path / f"copy-{tag}"
        await run([skopeo, *options, "copy", *extra, "--src-tls-verify=false", ref, f"dir:{dest}"], env)
        assert_dir_copy(dest, content)
        assert_pulled_through(wharf, name, tag, content)

    # A second pull is served from Wharf's store (sendfile), not from the fill that streamed it.
    hits = await cache_count(wharf, "blob", "hit")
    for content, tag, extra in ((pushed.image, IMAGE_TAG, []), (pushed.index, INDEX_TAG, ["--all"])):
        dest = tmp_path / f"again-{tag}"
        await run([skopeo, *options, "copy", *extra, "--src-tls-verify=false",
                   f"docker://{wharf_host}/{name}:{tag}", f"dir:{dest}"], env)
        assert_dir_copy(dest, content)
    assert await cache_count(wharf, "blob", "hit") - hits == len(pushed.image.blobs) + len(pushed.index.blobs)


async def test_skopeo_registries_conf_mirror(registry_upstream, make_wharf, repo_name, clients_dir, tmp_path):
    skopeo = require_binary("skopeo")
    pushed = await push_pair(registry_upstream, repo_name)
    wharf = await make_wharf(registry_upstream, upstream_options={"aliases": [ALIAS]})
    wharf_host = wharf.url.split("://", 1)[1]
    upstream_host = wharf.upstream_name(registry_upstream)
    env = client_env(clients_dir / "home")
    # The docs/clients.md config, for an upstream that is itself plain HTTP on 127.0.0.1.
    options = skopeo_files(clients_dir, f"""
[[registry]]
prefix = "{upstream_host}"
location = "{upstream_host}"
insecure = true
[[registry.mirror]]
location = "{wharf_host}/{ALIAS}"
insecure = true
""")

    for content, tag, extra in ((pushed.image, IMAGE_TAG, []), (pushed.index, INDEX_TAG, ["--all"])):
        dest = tmp_path / f"copy-{tag}"
        await run([skopeo, *options, "copy", *extra, f"docker://{upstream_host}/{repo_name}:{tag}",
                   f"dir:{dest}"], env)
        assert_dir_copy(dest, content)
        assert_pulled_through(wharf, f"{ALIAS}/{repo_name}", tag, content)


# --- containerd -------------------------------------------------------------------------------

def write_hosts_toml(hosts_dir: Path, upstream_url: str, wharf_url: str) -> None:
    """certs.d-style ``<host:port>/hosts.toml``: Wharf is the mirror, upstream the fallback."""
    host_dir = hosts_dir / upstream_url.split("://", 1)[1]
    host_dir.mkdir(parents=True)
    (host_dir / "hosts.toml").write_text(
        f'server = "{upstream_url}"\n\n[host."{wharf_url}"]\n  capabilities = ["pull", "resolve"]\n')


def ctr_images(listing: str) -> dict[str, str]:
    """``ctr images ls`` output as ``{ref: digest}``."""
    found = {}
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            found[fields[0]] = fields[2]
    return found




async def test_containerd_hosts_toml_mirror(registry_upstream, make_wharf, repo_name, clients_dir,
                                            containerd, tmp_path):
    ctr = require_binary("ctr")
    pushed = await push_pair(registry_upstream, repo_name)
    wharf = await make_wharf(registry_upstream)
    upstream_host = wharf.upstream_name(registry_upstream)
    hosts_dir = tmp_path / "certs.d"
    write_hosts_toml(hosts_dir, registry_upstream, wharf.url)
    env = client_env(clients_dir / "home")
    base = [ctr, "--address", str(containerd), "--namespace", f"wharf-{uuid.uuid4().hex[:8]}"]

    for content, tag, extra in ((pushed.image, IMAGE_TAG, []), (pushed.index, INDEX_TAG, ["--all-platforms"])):
        ref = f"{upstream_host}/{repo_name}:{tag}"
        await run([*base, "images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native",
                   *extra, ref], env, diagnostics=lambda: summary(wharf))
        assert ctr_images(await run([*base, "images", "ls"], env)).get(ref) == content.digest
        stored = set((await run([*base, "content", "ls", "-q"], env)).split())
        assert set(content.blobs) | set(content.manifests) <= stored
        assert_pulled_through(wharf, repo_name, tag, content, ns=upstream_host)

    # containerd names the registry it means on every request, and Wharf echoes it back.
    to_wharf = [s for s in wharf.seen if s.path.startswith("/v2/")]
    assert to_wharf and all(s.query.get("ns") == upstream_host for s in to_wharf), summary(wharf)
    not_echoed = [f"{s.method} {s.path}" for s in to_wharf
                  if s.response_headers.get("OCI-Namespace") != upstream_host]
    assert not not_echoed, f"no OCI-Namespace: {upstream_host} on {not_echoed}"
    # a handler counts its request when it returns, which can be just after the client has all
    # bytes; a client that closes first is counted as 499 (the test server cancels the handler)
    wanted = len(pushed.image.blobs) + len(pushed.index.blobs)

    def blob_gets(text: str) -> float:
        return sum(metric_value(text, "wharf_http_requests_total", route="blob", method="GET", status=status)
                   for status in ("200", "499"))

    for _ in range(50):
        metrics = await metrics_text(wharf)
        if blob_gets(metrics) >= wanted:
            break
        await asyncio.sleep(0.05)
    assert metric_value(metrics, "wharf_upstream_requests_total", upstream=upstream_host, status="200") > 0
    assert blob_gets(metrics) >= wanted


# --- dockerd ----------------------------------------------------------------------------------

async def test_dockerd_registry_mirrors(registry_upstream, make_wharf, clients_dir, dockerd):
    docker = require_binary("docker")
    # Bind the port dockerd was told about first, before anything else can take it.
    wharf = await make_wharf(named_upstreams={"docker.io": registry_upstream},
                             default_upstream="docker.io", port=dockerd.mirror_port)
    name = f"wharf-e2e-{uuid.uuid4().hex[:10]}"
    library = await push_pair(registry_upstream, f"library/{name}")
    someorg = await push_pair(registry_upstream, f"someorg/{name}")
    env = client_env(clients_dir / "home", DOCKER_HOST=dockerd.host)

    def diagnostics() -> str:
        return f"Wharf saw:\n{summary(wharf)}\n--- dockerd log ---\n{dockerd.daemon.log_tail()}"

    for short, pushed in ((name, library), (f"someorg/{name}", someorg)):
        for content, tag in ((pushed.image, IMAGE_TAG), (pushed.index, INDEX_TAG)):
            ref = f"{short}:{tag}"
            await run([docker, "pull", "-q", ref], env, diagnostics=diagnostics)
            repo_digest = (await run([docker, "image", "inspect", "--format",
                                      "{{index .RepoDigests 0}}", ref], env)).strip()
            assert repo_digest == f"{short}@{content.digest}"
            amd64 = content.image_for("amd64") if isinstance(content, ImageIndex) else content
            image_id = (await run([docker, "image", "inspect", "--format", "{{.Id}}", ref], env)).strip()
            assert image_id == amd64.config.digest
            assert_pulled_through(wharf, pushed.repo, tag, content, "amd64")

    # Removed and pulled again: every layer now comes from Wharf's store.
    ref = f"{name}:{INDEX_TAG}"
    await run([docker, "rmi", ref], env)
    hits = await cache_count(wharf, "blob", "hit")
    await run([docker, "pull", "-q", ref], env, diagnostics=diagnostics)
    amd64 = library.index.image_for("amd64")
    assert (await run([docker, "image", "inspect", "--format", "{{.Id}}", ref], env)).strip() == amd64.config.digest
    assert await cache_count(wharf, "blob", "hit") - hits == len(amd64.blobs)


PRIVATE_ALIAS = "private.test"   # a port-less alias of the htpasswd upstream
REFUSED = re.compile(r"unauthorized|denied|authentication required", re.IGNORECASE)


async def test_dockerd_login_to_wharf_for_private_upstream(auth_registry_upstream, make_wharf, repo_name,
                                                           clients_dir, dockerd, tmp_path):
    """The issue's requirement with the real docker CLI and dockerd: a client with no credentials
    gets a challenge for private upstream content; ``docker login <wharf>`` (a wrong password is
    refused) plus pull satisfies it; after ``docker logout`` the content Wharf now holds is not
    served to the credential-less client.

    dockerd learns how to authenticate only from a 401 on its ``GET /v2/`` ping, so Wharf answers
    docker's anonymous ping with the challenge to its ``/token``; the login then exchanges the
    credentials there (checked at the upstreams), and pulls fetch scoped tokens with them.
    """
    docker = require_binary("docker")
    upstream = auth_registry_upstream
    image = make_image(f"{repo_name}:private", (2000, 40_000))
    await push_image(upstream.url, repo_name, image, tag=IMAGE_TAG, auth=upstream.auth)
    wharf = await make_wharf(upstream.url, upstream_options={"aliases": [PRIVATE_ALIAS]})
    wharf_host = wharf.url.split("://", 1)[1]
    name = f"{PRIVATE_ALIAS}/{repo_name}"
    ref = f"{wharf_host}/{name}:{IMAGE_TAG}"
    config_dir = tmp_path / "docker-config"  # this test's login state only, never ~/.docker
    env = client_env(clients_dir / "home", DOCKER_HOST=dockerd.host, DOCKER_CONFIG=str(config_dir))
    login = [docker, "login", wharf_host, "-u", upstream.username, "--password-stdin"]

    def diagnostics() -> str:
        return f"Wharf saw:\n{summary(wharf)}\n--- dockerd log ---\n{dockerd.daemon.log_tail()}"

    async def refused(argv: list[str], stdin: bytes | None = None) -> None:
        status, stdout, stderr = await run_status(argv, env, stdin=stdin)
        output = stdout + stderr
        outcome = "timed out" if status is None else "succeeded" if status == 0 else ""
        assert not outcome, f"{' '.join(argv)} {outcome}:\n{output}\n{diagnostics()}"
        assert REFUSED.search(output), f"{' '.join(argv)} failed for another reason:\n{output}\n{diagnostics()}"

    def logged_in() -> bool:
        path = config_dir / "config.json"
        return path.exists() and wharf_host in json.loads(path.read_text() or "{}").get("auths", {})

    def token_requests(status: int) -> list:
        return [s for s in wharf.seen if s.path == "/token" and s.status == status]

    def challenged_on_manifest() -> bool:
        realm = f'Bearer realm="{wharf.url}/token"'
        return any(s.path == f"/v2/{name}/manifests/{IMAGE_TAG}" and s.status == 401
                   and s.response_headers.get("WWW-Authenticate", "").startswith(realm) for s in wharf.seen)

    # 1. no credentials: refused, with a challenge that points at Wharf's own /token
    await refused([docker, "pull", "-q", ref])
    assert challenged_on_manifest(), diagnostics()
    assert not any(s.status == 200 for s in wharf.seen if "/manifests/" in s.path), diagnostics()

    # 2. docker login checks the password at Wharf's /token: a wrong one is refused, the right one accepted
    wharf.seen.clear()
    await refused(login, stdin=b"not-" + upstream.password.encode() + b"\n")
    assert not logged_in()
    assert [s for s in token_requests(401) if s.request_headers.get("Authorization", "").startswith("Basic ")], \
        diagnostics()
    await run(login, env, diagnostics=diagnostics, stdin=upstream.password.encode() + b"\n")
    assert logged_in()
    assert token_requests(200), diagnostics()

    # 3. logged in: the pull sends Wharf's token and gets upstream's image, digest for digest
    wharf.seen.clear()
    await run([docker, "pull", "-q", ref], env, diagnostics=diagnostics)
    inspect = [docker, "image", "inspect", "--format"]
    assert (await run([*inspect, "{{index .RepoDigests 0}}", ref], env)).strip() == \
        f"{wharf_host}/{name}@{image.digest}"
    assert (await run([*inspect, "{{.Id}}", ref], env)).strip() == image.config.digest
    assert_pulled_through(wharf, name, IMAGE_TAG, image)
    anonymous = [f"{s.method} {s.path}" for s in wharf.seen if s.path.startswith(f"/v2/{name}/")
                 and not s.request_headers.get("Authorization", "").startswith("Bearer wharf.")]
    assert not anonymous, f"pulled without Wharf's token: {anonymous}"

    # 4. logged out and removed: the content Wharf now holds is not served without credentials
    await run([docker, "logout", wharf_host], env)
    assert not logged_in()
    await run([docker, "rmi", ref], env)
    wharf.seen.clear()
    await refused([docker, "pull", "-q", ref])
    assert challenged_on_manifest(), diagnostics()
    assert not any("Authorization" in s.request_headers for s in wharf.seen if s.path == "/token"), diagnostics()
    leaked = [f"{s.method} {s.path}" for s in wharf.seen if s.status == 200 and s.path.startswith(f"/v2/{name}/")]
    assert not leaked, f"served without credentials: {leaked}"


async def test_skopeo_credentials_for_private_upstream(auth_registry_upstream, make_wharf, repo_name,
                                                       clients_dir, tmp_path):
    """skopeo (the containers/image family) with --creds: refused without or with wrong
    credentials, digest-exact with the right ones; the cached private content stays refused."""
    skopeo = require_binary("skopeo")
    upstream = auth_registry_upstream
    image = make_image(f"{repo_name}:skopeo-private", (3000, 50_000))
    await push_image(upstream.url, repo_name, image, tag=IMAGE_TAG, auth=upstream.auth)
    wharf = await make_wharf(upstream.url, upstream_options={"aliases": [PRIVATE_ALIAS]})
    ref = f"docker://{wharf.url.split('://', 1)[1]}/{PRIVATE_ALIAS}/{repo_name}:{IMAGE_TAG}"
    env = client_env(clients_dir / "home")
    options = skopeo_files(clients_dir)
    copy = [skopeo, *options, "copy", "--src-tls-verify=false"]

    for creds in ([], ["--src-creds", f"{upstream.username}:wrong"]):
        status, stdout, stderr = await run_status([*copy, *creds, ref, f"dir:{tmp_path / 'refused'}"], env)
        assert status not in (0, None) and REFUSED.search(stdout + stderr), stdout + stderr
    dest = tmp_path / "granted"
    await run([*copy, "--src-creds", f"{upstream.username}:{upstream.password}", ref, f"dir:{dest}"], env)
    assert_dir_copy(dest, image)
    status, stdout, stderr = await run_status([*copy, ref, f"dir:{tmp_path / 'after'}"], env)
    assert status not in (0, None) and REFUSED.search(stdout + stderr), stdout + stderr
