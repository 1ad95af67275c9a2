"""Configuration: YAML + env overrides, secrets from env or files, errors that name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy.config import ConfigError, load_config


def write(tmp_path, text: str):
    path = tmp_path / "wharf.yaml"
    path.write_text(text)
    return path


def test_embedded_default_has_the_documented_upstreams():
    config = load_config(environ={})
    assert config.listen == "0.0.0.0:5000"
    assert config.workers >= 1
    assert str(config.storage.root) == "data"
    assert [u.name for u in config.upstreams] == ["docker.io", "ghcr.io", "quay.io", "gcr.io", "registry.k8s.io"]
    assert config.default_upstream == "docker.io"


def test_env_overrides_nested_keys(tmp_path):
    config = load_config(environ={"WHARF_LISTEN": "127.0.0.1:6000", "WHARF_STORAGE__MAX_CACHE_BYTES": "2GiB",
                                  "WHARF_DEFAULT_UPSTREAM": "null", "WHARF_REDIS__URL": "redis://r:6379/0"})
    assert config.port == 6000
    assert config.storage.max_cache_bytes == 2 * 2**30
    assert config.default_upstream is None
    assert config.redis.url == "redis://r:6379/0"


def test_password_from_file_env_and_upstream_variable(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    path = write(tmp_path, f"""
upstreams:
  - {{name: a.example, url: "https://a.example", username: u, password_file: {secret}}}
  - {{name: b.example, url: "https://b.example", username: u, password_env: B_PW}}
  - {{name: c.example, url: "https://c.example", username: u}}
""")
    config = load_config(path, environ={"B_PW": "from-env", "WHARF_UPSTREAM_C_EXAMPLE_PASSWORD": "from-var"})
    assert [u.password for u in config.upstreams] == ["from-file", "from-env", "from-var"]
    assert "from-file" not in repr(config)


@pytest.mark.parametrize("text, key", [
    ("listen: nowhere", "listen"),
    ("storage: {max_cache_bytes: lots}", "storage.max_cache_bytes"),
    ("upstreams: [{name: x, url: 'ftp://x'}]", "upstreams.0.url"),
    ("upstreams: [{name: x, url: 'https://x', tag_ttl: -1}]", "upstreams.0.tag_ttl"),
    ("default_upstream: nope\nupstreams: []", "default_upstream"),
    ("storage: {rooot: /x}", "storage.rooot"),
])
def test_bad_config_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert key in str(info.value)


def test_missing_password_variable_is_named(tmp_path):
    path = write(tmp_path, "upstreams: [{name: x, url: 'https://x', username: u, password_env: NOPE}]")
    with pytest.raises(ConfigError, match="upstreams\\[0\\].password_env: variable NOPE"):
        load_config(path, environ={})


def test_serve_refuses_a_bad_config_at_start(tmp_path):
    path = write(tmp_path, "listen: nowhere")
    result = subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "listen" in result.stderr


def test_workers_auto_means_one_per_core():
    import os

    config = load_config(environ={"WHARF_WORKERS": "auto"})
    assert config.workers == len(os.sched_getaffinity(0))
    assert load_config(environ={"WHARF_WORKERS": "3"}).workers == 3


def test_cluster_settings_are_validated_and_the_secret_never_shown(tmp_path):
    from proxy.config import config_from_dict
    from proxy.config_commands import masked

    secret = tmp_path / "cluster.secret"
    secret.write_text("a-cluster-secret-of-enough-length-0123456789\n")
    short = tmp_path / "short.secret"
    short.write_text("too-short\n")
    redis = {"url": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError, match="secret_file"):
        config_from_dict({"redis": redis, "cluster": {"advertise_url": "http://10.0.0.7:5000"}})
    with pytest.raises(ConfigError, match="at least 32"):
        config_from_dict({"redis": redis, "cluster": {"advertise_url": "http://10.0.0.7:5000",
                                                      "secret_file": str(short)}})
    with pytest.raises(ConfigError, match="redis.url"):
        config_from_dict({"cluster": {"advertise_url": "http://10.0.0.7:5000", "secret_file": str(secret)}})
    with pytest.raises(ConfigError, match="advertise_url"):
        config_from_dict({"redis": redis, "cluster": {"advertise_url": "10.0.0.7:5000/x", "secret_file": str(secret)}})
    config = config_from_dict({"redis": redis, "cluster": {"advertise_url": "http://10.0.0.7:5000/",
                                                           "secret_file": str(secret)}})
    assert config.cluster.advertise_url == "http://10.0.0.7:5000"
    assert config.cluster.secret == b"a-cluster-secret-of-enough-length-0123456789"
    shown = repr(config) + str(masked(config))
    assert "a-cluster-secret" not in shown


def test_replica_signatures_cover_the_path_and_expire():
    from proxy.upstream.peer import sign, verify

    secret = b"s" * 32
    path = "/_wharf/peer/blobs/sha256:" + "a" * 64
    header = sign(secret, "GET", path, now=1_000_000)
    assert verify(secret, header, "GET", path, now=1_000_010)
    assert not verify(secret, header, "GET", path, now=1_000_061), "expired after a minute"
    assert not verify(secret, header, "GET", path.replace("a", "b"), now=1_000_010)
    assert not verify(secret, header, "HEAD", path, now=1_000_010)
    assert not verify(b"t" * 32, header, "GET", path, now=1_000_010)
    far = sign(secret, "GET", path, now=1_000_000 + 3600)
    assert not verify(secret, far, "GET", path, now=1_000_000), "no signature good for long in advance"
    for bad in (None, "", "x", "1.", ".abc", "-5.ab", "9" * 40 + ".ab", header + "0",
                "\u00b2\u00b3." + "a" * 64, header.split(".")[0] + "." + "\u00e9" * 64):
        assert not verify(secret, bad, "GET", path, now=1_000_010)
