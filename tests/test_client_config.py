"""``proxy.clientconfig`` and ``wharf client-config``: the files parse as TOML / JSON, name every
upstream, address Wharf by --host, public_url or the listen address, and say plain HTTP only when
Wharf is plain HTTP. ``tests/test_client_config_clients.py`` feeds the same files to the real clients."""

from __future__ import annotations

import json
import socket
import subprocess
import tomllib

import pytest
import yaml

from proxy.clientconfig import CLIENTS, HostInvalid, client_files
from proxy.config import config_from_dict
from support.wharf_serve import wharf_argv, wharf_env

UPSTREAMS = [
    {"name": "docker.io", "url": "https://registry-1.docker.io"},
    {"name": "ghcr.io", "url": "https://ghcr.io", "aliases": ["ghcr"]},
    {"name": "registry.example.com:8443", "url": "https://registry.example.com:8443", "aliases": ["internal.mirror"]},
    {"name": "plain.test", "url": "http://127.0.0.1:5999"},
]

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)


def _config(**overrides):
    data = {"listen": "127.0.0.1:5000", "upstreams": UPSTREAMS, "default_upstream": "docker.io"}
    data.update(overrides)
    return config_from_dict(data)


def _one(config, client: str, host: str | None = None):
    (file,) = client_files(config, client, host)
    return file


# --- containerd -----------------------------------------------------------------------------------

def test_containerd_has_one_hosts_toml_per_upstream_with_its_server_and_wharf_as_mirror():
    files = client_files(_config(), "containerd")
    assert [f.path for f in files] == [f"/etc/containerd/certs.d/{u['name']}/hosts.toml" for u in UPSTREAMS]
    for file, upstream in zip(files, UPSTREAMS):
        parsed = tomllib.loads(file.text)
        assert file.client == "containerd"
        assert parsed["server"] == upstream["url"]
        assert parsed["host"] == {"http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}}
        assert f"ns={upstream['name']}" in file.note


def test_containerd_names_docker_hub_docker_io_whatever_its_upstreams_name():
    config = _config(upstreams=[{"name": "registry-1.docker.io", "url": "https://registry-1.docker.io"}],
                     default_upstream=None)
    assert [f.path for f in client_files(config, "containerd")] == ["/etc/containerd/certs.d/docker.io/hosts.toml"]


# --- podman, skopeo, buildah ----------------------------------------------------------------------

def test_registries_conf_mirrors_each_upstream_under_its_path_prefix():
    file = _one(_config(), "podman")
    assert file.path == "/etc/containers/registries.conf"
    parsed = tomllib.loads(file.text)
    assert parsed["unqualified-search-registries"] == ["docker.io"]
    registries = {r["prefix"]: r for r in parsed["registry"]}
    assert list(registries) == ["docker.io", "ghcr.io", "registry.example.com:8443", "plain.test"]
    assert registries["docker.io"]["location"] == "docker.io"
    assert registries["ghcr.io"]["location"] == "ghcr.io"
    assert registries["ghcr.io"]["mirror"] == [{"location": "127.0.0.1:5000/ghcr.io", "insecure": True}]
    # a name with a port cannot be a location's path component: its port-less alias is
    assert registries["registry.example.com:8443"]["mirror"][0]["location"] == "127.0.0.1:5000/internal.mirror"
    # a plain-HTTP upstream is insecure as the client's fallback too; HTTPS ones are not
    assert registries["plain.test"]["location"] == "127.0.0.1:5999" and registries["plain.test"]["insecure"] is True
    assert "insecure" not in registries["ghcr.io"]


def test_an_upstream_with_a_port_and_no_portless_alias_is_left_out_saying_why():
    config = _config(upstreams=[{"name": "ghcr.io", "url": "https://ghcr.io"},
                                {"name": "reg.test:8443", "url": "https://reg.test:8443"}], default_upstream=None)
    file = _one(config, "podman")
    parsed = tomllib.loads(file.text)
    assert [r["prefix"] for r in parsed["registry"]] == ["ghcr.io"]
    assert "unqualified-search-registries" not in parsed
    assert "Left out: reg.test:8443" in file.note and "alias" in file.note


# --- dockerd --------------------------------------------------------------------------------------

def test_daemon_json_mirrors_docker_hub_and_names_the_other_upstreams_in_the_note():
    file = _one(_config(), "docker")
    assert file.path == "/etc/docker/daemon.json"
    assert json.loads(file.text) == {"registry-mirrors": ["http://127.0.0.1:5000"],
                                     "insecure-registries": ["127.0.0.1:5000"]}
    assert "127.0.0.1:5000/<upstream>/<repo>" in file.note
    assert "ghcr.io" in file.note and "plain.test" in file.note


def test_daemon_json_has_no_mirror_unless_the_default_upstream_is_docker_hub():
    file = _one(_config(default_upstream="ghcr.io"), "docker")
    assert json.loads(file.text) == {"insecure-registries": ["127.0.0.1:5000"]}
    assert "default_upstream: docker.io" in file.note
    file = _one(_config(default_upstream=None, public_url="https://wharf.example"), "docker")
    assert json.loads(file.text) == {}


# --- how Wharf is addressed -----------------------------------------------------------------------

def _addresses(config, host=None) -> dict[str, object]:
    """What each client is told about Wharf: containerd's host key, podman's mirror, docker's settings."""
    hosts = tomllib.loads(client_files(config, "containerd", host)[1].text)["host"]
    mirror = {r["prefix"]: r for r in tomllib.loads(_one(config, "podman", host).text)["registry"]}["ghcr.io"]
    return {"containerd": list(hosts), "podman": mirror["mirror"][0], "docker": json.loads(_one(config, "docker", host).text)}


def test_an_https_public_url_has_no_insecure_entries():
    assert _addresses(_config(public_url="https://wharf.example")) == {
        "containerd": ["https://wharf.example"],
        "podman": {"location": "wharf.example/ghcr.io"},
        "docker": {"registry-mirrors": ["https://wharf.example"]},
    }


def test_an_http_public_url_keeps_its_port_and_is_insecure():
    assert _addresses(_config(public_url="http://wharf.example:8080/")) == {
        "containerd": ["http://wharf.example:8080"],
        "podman": {"location": "wharf.example:8080/ghcr.io", "insecure": True},
        "docker": {"registry-mirrors": ["http://wharf.example:8080"], "insecure-registries": ["wharf.example:8080"]},
    }


def test_tls_on_the_listener_means_https_at_the_listen_address(tmp_path):
    config = _config(listen="10.1.2.3:5443", tls={"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem")})
    assert _addresses(config) == {
        "containerd": ["https://10.1.2.3:5443"],
        "podman": {"location": "10.1.2.3:5443/ghcr.io"},
        "docker": {"registry-mirrors": ["https://10.1.2.3:5443"]},
    }


def test_host_overrides_the_address_and_keeps_the_scheme():
    addresses = _addresses(_config(public_url="https://wharf.example"), host="mirror.internal:5000")
    assert addresses["containerd"] == ["https://mirror.internal:5000"]
    assert addresses["podman"] == {"location": "mirror.internal:5000/ghcr.io"}
    assert _addresses(_config(), host="node-7:5000")["podman"] == {"location": "node-7:5000/ghcr.io", "insecure": True}


def test_a_wildcard_listener_is_named_by_this_machines_host_name():
    hostname = socket.gethostname()
    assert _addresses(_config(listen="0.0.0.0:5000"))["containerd"] == [f"http://{hostname}:5000"]


@pytest.mark.parametrize("host", ["http://wharf.example", "wharf.example/v2", "wharf example", "", "wharf:port"])
def test_a_host_that_is_no_host_and_port_is_refused(host):
    with pytest.raises(HostInvalid, match="host or host:port"):
        client_files(_config(), "podman", host)


def test_an_unknown_client_is_refused():
    with pytest.raises(ValueError, match="containerd, podman, docker"):
        client_files(_config(), "rkt")


# --- the command ----------------------------------------------------------------------------------

def _command(tmp_path, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "wharf.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump({"listen": "127.0.0.1:5000", "upstreams": UPSTREAMS,
                                        "default_upstream": "docker.io", "public_url": "https://wharf.example"}))
    return subprocess.run(wharf_argv("client-config", *args, "--config", str(path)), env=wharf_env(),
                          capture_output=True, text=True, timeout=30)


def _printed_files(output: str) -> dict[str, str]:
    """The CLI's output split at each file's header: {path: text without the comment lines}."""
    files: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("# --- "):
            current = files.setdefault(line[len("# --- "):], [])
        elif current is not None and not line.startswith("# "):
            current.append(line)
    return {path: "\n".join(lines).strip() + "\n" for path, lines in files.items()}


@pytest.mark.parametrize("client", CLIENTS)
def test_the_command_prints_every_file_under_its_path(tmp_path, client):
    result = _command(tmp_path, client, "--host", "mirror.internal:5000")
    assert result.returncode == 0, result.stderr
    expected = client_files(_config(public_url="https://wharf.example"), client, "mirror.internal:5000")
    printed = _printed_files(result.stdout)
    assert printed == {f.path: f.text.strip() + "\n" for f in expected}
    for text in printed.values():  # what a user saves from it parses
        json.loads(text) if client == "docker" else tomllib.loads(text)
    assert "mirror.internal:5000" in result.stdout and "wharf.example" not in "".join(printed.values())


def test_the_command_defaults_to_the_public_url(tmp_path):
    result = _command(tmp_path, "containerd")
    assert result.returncode == 0, result.stderr
    hosts = tomllib.loads(_printed_files(result.stdout)["/etc/containerd/certs.d/ghcr.io/hosts.toml"])["host"]
    assert list(hosts) == ["https://wharf.example"]


def test_the_command_refuses_a_bad_host_or_config_on_one_line(tmp_path):
    result = _command(tmp_path, "podman", "--host", "https://wharf.example")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "--host" in result.stderr
    (tmp_path / "wharf.yaml").write_text("upstreams: [{name: ghcr.io}]\n")
    result = _command(tmp_path, "podman")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "upstreams.0.url" in result.stderr
    result = _command(tmp_path, "rkt")
    assert result.returncode == 2 and "invalid choice" in result.stderr
