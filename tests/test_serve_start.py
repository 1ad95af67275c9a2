"""``wharf serve`` as an operator starts it: one-line start errors with exit status 2, the
listen address (IPv6 and dual-stack), platform-injected ``WHARF_*`` variables, the files it
creates (owner only), and the ``healthcheck`` and ``--version`` commands."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import tomllib
import urllib.request

import pytest

from proxy.config import load_config
from support.images import MANIFEST_ACCEPT, make_image, push_image
from support.servers import free_port, has_ipv6_loopback
from support.wharf_serve import SOURCE_ROOT, assert_one_line_refusal, start_failure, start_wharf, wharf_argv, wharf_env


def _minimal(tmp_path, **overrides) -> dict:
    config = {"listen": f"127.0.0.1:{free_port()}", "workers": 1, "storage": {"root": str(tmp_path / "data")},
              "upstreams": [], "default_upstream": None}
    config.update(overrides)
    return config


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


# --- start failures -----------------------------------------------------------------------

def test_a_port_in_use_is_one_line_naming_listen(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, stderr = start_failure(tmp_path, _minimal(tmp_path, listen=f"127.0.0.1:{port}"))
    assert_one_line_refusal(status, stderr, "listen", f"127.0.0.1:{port}", "in use")


def test_an_unwritable_storage_root_is_one_line_naming_it(tmp_path):
    # tests run as root, which may write anywhere the mode forbids: a path under a regular file
    # cannot be created by anyone
    (tmp_path / "a-file").write_text("")
    root = tmp_path / "a-file" / "data"
    status, stderr = start_failure(tmp_path, _minimal(tmp_path, storage={"root": str(root)}))
    assert_one_line_refusal(status, stderr, "storage.root", str(root))


def test_a_read_only_storage_root_is_refused(tmp_path):
    """A root that exists but cannot be written (an immutable directory, which root cannot
    write either)."""
    root = tmp_path / "frozen"
    root.mkdir()
    if subprocess.run(["chattr", "+i", str(root)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system, so no directory is unwritable for root")
    try:
        status, stderr = start_failure(tmp_path, _minimal(tmp_path, storage={"root": str(root)}))
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)
    assert_one_line_refusal(status, stderr, "storage.root", str(root))


def test_an_unknown_log_level_is_one_line_naming_it(tmp_path):
    status, stderr = start_failure(tmp_path, _minimal(tmp_path, log={"level": "verbose"}))
    assert_one_line_refusal(status, stderr, "log.level", "verbose")


@pytest.mark.parametrize("level", ["debug", "INFO", "warning", "error"])
def test_the_documented_log_levels_are_accepted(level):
    assert load_config(environ={"WHARF_LOG__LEVEL": level}).log.level == level.lower()


# --- listen ---------------------------------------------------------------------------------

def test_bracketed_ipv6_wildcard_serves_both_families(tmp_path):
    port = free_port()
    wharf = start_wharf(tmp_path, _minimal(tmp_path, listen=f"[::]:{port}"))
    try:
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        if not has_ipv6_loopback():
            pytest.skip("the IPv4 half passed; this machine has no IPv6 loopback (::1) to try the other")
        assert _get(f"http://[::1]:{port}/healthz")[0] == 200
    finally:
        wharf.stop()
    assert wharf.process.returncode == 0, wharf.output()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1) to listen on")
def test_bracketed_ipv6_address(tmp_path):
    port = free_port()
    wharf = start_wharf(tmp_path, _minimal(tmp_path, listen=f"[::1]:{port}"))
    try:
        status, body = _get(f"http://[::1]:{port}/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok"}
    finally:
        wharf.stop()


def test_ipv4_wildcard_still_serves(tmp_path):
    port = free_port()
    wharf = start_wharf(tmp_path, _minimal(tmp_path, listen=f"0.0.0.0:{port}"))
    try:
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        wharf.stop()


def test_an_unbracketed_ipv6_address_is_refused_with_a_hint(tmp_path):
    status, stderr = start_failure(tmp_path, _minimal(tmp_path, listen="::1:5000"))
    assert_one_line_refusal(status, stderr, "listen", "[::]:5000")


# --- the environment ------------------------------------------------------------------------

KUBERNETES_SERVICE_LINKS = {  # what a pod gets for a Service named "wharf" (and one named wharf-headless)
    "WHARF_SERVICE_HOST": "10.96.0.12", "WHARF_SERVICE_PORT": "5000", "WHARF_SERVICE_PORT_HTTP": "5000",
    "WHARF_PORT": "tcp://10.96.0.12:5000", "WHARF_PORT_5000_TCP": "tcp://10.96.0.12:5000",
    "WHARF_PORT_5000_TCP_PROTO": "tcp", "WHARF_PORT_5000_TCP_PORT": "5000",
    "WHARF_PORT_5000_TCP_ADDR": "10.96.0.12",
    "WHARF_HEADLESS_SERVICE_HOST": "10.96.0.13", "WHARF_HEADLESS_PORT": "tcp://10.96.0.13:5000",
}


def test_kubernetes_service_variables_are_not_config(tmp_path):
    config = _minimal(tmp_path, workers=3)
    wharf = start_wharf(tmp_path, config, env={**KUBERNETES_SERVICE_LINKS, "WHARF_WORKERS": "1"})
    try:
        assert _get(wharf.url + "/healthz")[0] == 200
    finally:
        wharf.stop()
    assert "with 1 worker(s)" in wharf.output(), "a variable naming a real key is still config"
    assert load_config(environ=KUBERNETES_SERVICE_LINKS) == load_config(environ={})


# --- files in the store ---------------------------------------------------------------------

async def test_everything_serve_creates_is_the_owners_alone(registry_upstream, repo_name, tmp_path):
    import aiohttp

    image = make_image("modes", (2000, 600_000))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    upstream = registry_upstream.split("://", 1)[1]
    root = tmp_path / "data"
    config = _minimal(tmp_path, upstreams=[{"name": upstream, "url": registry_upstream}])
    old = os.umask(0o022)  # what a shell usually has; Wharf must not rely on it
    try:
        wharf = start_wharf(tmp_path / "work", config)
    finally:
        os.umask(old)
    try:
        async with aiohttp.ClientSession() as session:
            for path in [f"/v2/{upstream}/{repo_name}/manifests/v1",
                         *(f"/v2/{upstream}/{repo_name}/blobs/{d}" for d in image.blobs)]:
                async with session.get(wharf.url + path, headers={"Accept": MANIFEST_ACCEPT}) as resp:
                    assert resp.status == 200
                    await resp.read()
            exposed = _exposed(root)  # while serving: SQLite's -wal and -shm files exist now
            created = [p.name for p in root.rglob("*")]
    finally:
        wharf.stop()
    exposed += _exposed(root)
    assert any(name.endswith(".db-wal") for name in created), created
    assert any(p.is_file() and p.stat().st_size > 500_000 for p in (root / "blobs").rglob("*")), "no stored blob"
    assert not exposed, f"readable or writable by others: {exposed}"


def _exposed(root) -> list[str]:
    """Files and directories under ``root`` (itself included) that group or others may use."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


# --- healthcheck and --version --------------------------------------------------------------

def _healthcheck(config_path) -> subprocess.CompletedProcess:
    return subprocess.run(wharf_argv("healthcheck", "--config", str(config_path)), env=wharf_env(),
                          capture_output=True, text=True, timeout=30)


def test_healthcheck_follows_listen_in_the_config_file(tmp_path):
    wharf = start_wharf(tmp_path, _minimal(tmp_path))  # the port is only in the file
    try:
        result = _healthcheck(wharf.config_path)
        assert result.returncode == 0, result.stderr
    finally:
        wharf.stop()
    result = _healthcheck(wharf.config_path)
    assert result.returncode == 1 and "healthz" in result.stderr


def test_the_dockerfiles_healthcheck_asks_the_configured_address(tmp_path):
    """The image's HEALTHCHECK command, run as the image runs it, against a server whose listen
    address is set only in its config file."""
    line = next(line for line in (SOURCE_ROOT / "Dockerfile").read_text().splitlines()
                if line.strip().startswith("CMD [") and "heal" in line)
    argv = json.loads(line.strip()[len("CMD"):])
    wharf = start_wharf(tmp_path, _minimal(tmp_path))
    try:
        argv = [str(wharf.config_path) if arg == "/etc/wharf/wharf.yaml" else arg for arg in argv]
        assert argv[0] == "wharf", argv
        result = subprocess.run(wharf_argv(*argv[1:]), env=wharf_env(), capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    finally:
        wharf.stop()


def test_version_is_the_packages():
    version = tomllib.loads((SOURCE_ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = subprocess.run(wharf_argv("--version"), env=wharf_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == f"wharf {version}"


def test_start_removes_only_old_temporary_files(tmp_path):
    """A crash's leftovers go at start; what another process of the store writes now (a ``wharf
    mirror import``, a worker's fill) stays."""
    import time

    root = tmp_path / "store"
    (root / "tmp").mkdir(parents=True)
    old, fresh = root / "tmp" / "fill-sha256-old.part", root / "tmp" / "import-fresh.part"
    old.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 100)
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    wharf = start_wharf(tmp_path, {"listen": f"127.0.0.1:{free_port()}", "storage": {"root": str(root)}})
    try:
        assert not old.exists()
        assert fresh.read_bytes() == b"y" * 100
    finally:
        wharf.stop()
