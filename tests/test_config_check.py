"""``wharf config check FILE``: the effective config as YAML, every secret masked (upstream
passwords however given, passwords in the database and Redis URLs), paths to secrets kept; an
invalid config exits 2 with its error on one line."""

from __future__ import annotations

import pytest

import subprocess

import yaml
from cryptography.fernet import Fernet

from proxy.config_commands import MASK, mask_url
from support.wharf_serve import wharf_argv, wharf_env

SECRETS = {
    "upstream": "hub-pass-Zq81",
    "env": "ghcr-pass-Yw27",
    "file": "quay-pass-Xv63",
    "redis": "redis-pass-Wu49",
    "postgres": "pg-pass-Vt05",
    "userinfo": "url-pass-Us11",
}

pytestmark = pytest.mark.once  # pages and generated files: no fast path in them (pyproject.toml)


def _check(tmp_path, config: dict | str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "wharf.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return subprocess.run(wharf_argv("config", "check", str(path)), env=wharf_env(env),
                          capture_output=True, text=True, timeout=30)


def _secret_config(tmp_path) -> dict:
    (tmp_path / "quay.pass").write_text(SECRETS["file"] + "\n")
    (tmp_path / "token.key").write_bytes(Fernet.generate_key())
    return {
        "listen": "127.0.0.1:5000",
        "upstreams": [
            {"name": "docker.io", "url": "https://registry-1.docker.io", "username": "hubuser",
             "password": SECRETS["upstream"]},
            {"name": "ghcr.io", "url": "https://ghcr.io", "username": "ghuser", "password_env": "GHCR_PASSWORD"},
            {"name": "quay.io", "url": "https://quay.io", "username": "quser",
             "password_file": str(tmp_path / "quay.pass")},
            {"name": "internal.test", "url": f"https://robot:{SECRETS['userinfo']}@registry.internal.test"},
        ],
        "default_upstream": "docker.io",
        "redis": {"url": f"redis://:{SECRETS['redis']}@127.0.0.1:6379/0"},
        "database": {"url": f"postgresql+psycopg://wharf:{SECRETS['postgres']}@db.internal:5432/wharf"},
        "tokens": {"key_file": str(tmp_path / "token.key")},
    }


def test_the_effective_config_is_printed_with_every_secret_masked(tmp_path):
    result = _check(tmp_path, _secret_config(tmp_path), env={"GHCR_PASSWORD": SECRETS["env"]})
    assert result.returncode == 0, result.stderr
    for name, secret in SECRETS.items():
        assert secret not in result.stdout + result.stderr, f"the {name} secret is shown"
    printed = yaml.safe_load(result.stdout)
    upstreams = {u["name"]: u for u in printed["upstreams"]}
    # a password set in the file, from a variable or from a file: there, and masked
    assert [upstreams[n]["password"] for n in ("docker.io", "ghcr.io", "quay.io")] == [MASK] * 3
    assert upstreams["ghcr.io"]["password_env"] == "GHCR_PASSWORD"
    assert upstreams["quay.io"]["password_file"] == str(tmp_path / "quay.pass")
    assert upstreams["docker.io"]["username"] == "hubuser"
    assert upstreams["internal.test"]["url"] == f"https://robot:{MASK}@registry.internal.test"
    assert upstreams["internal.test"]["password"] is None
    assert printed["redis"]["url"] == f"redis://:{MASK}@127.0.0.1:6379/0"
    assert printed["database"]["url"] == f"postgresql+psycopg://wharf:{MASK}@db.internal:5432/wharf"
    assert printed["tokens"]["key_file"] == str(tmp_path / "token.key")
    assert printed["listen"] == "127.0.0.1:5000" and printed["default_upstream"] == "docker.io"


def test_environment_overrides_are_in_the_effective_config(tmp_path):
    result = _check(tmp_path, {"listen": "127.0.0.1:5000"},
                    env={"WHARF_LISTEN": "127.0.0.1:6000", "WHARF_REDIS__URL": f"redis://u:{SECRETS['redis']}@r:6379"})
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["listen"] == "127.0.0.1:6000"
    assert printed["redis"]["url"] == f"redis://u:{MASK}@r:6379"
    assert SECRETS["redis"] not in result.stdout
    assert printed["web"]["enabled"] is True  # defaults are shown too: it is the whole effective config


def test_secrets_in_a_url_query_and_a_lone_redis_password_are_masked():
    assert mask_url("postgresql+psycopg://db/wharf?user=w&password=s3cret&sslmode=require") == \
        f"postgresql+psycopg://db/wharf?user=w&password={MASK}&sslmode=require"
    assert mask_url("redis://s3cret@cache:6379/1") == f"redis://{MASK}@cache:6379/1"
    assert mask_url("postgresql://wharf@db/wharf") == "postgresql://wharf@db/wharf"
    assert mask_url("https://ghcr.io") == "https://ghcr.io"


def test_an_invalid_config_exits_2_with_the_error_on_one_line(tmp_path):
    result = _check(tmp_path, {"upstreams": [{"name": "ghcr.io", "url": "ghcr.io"}], "default_upstream": "ghcr.io"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("wharf: invalid config: upstreams.0.url: ")


def test_a_password_env_that_is_not_set_is_a_one_line_error_naming_it(tmp_path):
    config = {"upstreams": [{"name": "ghcr.io", "url": "https://ghcr.io", "username": "u",
                             "password_env": "WHARF_TEST_UNSET_PASSWORD"}]}
    result = _check(tmp_path, config)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "wharf: upstreams[0].password_env: variable WHARF_TEST_UNSET_PASSWORD is not set\n"


def test_yaml_that_does_not_parse_is_one_line_too(tmp_path):
    result = _check(tmp_path, "listen: [unclosed\nupstreams: {\n")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "is not valid YAML" in result.stderr


def test_a_missing_file_is_named(tmp_path):
    result = subprocess.run(wharf_argv("config", "check", str(tmp_path / "nope.yaml")), env=wharf_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nope.yaml" in result.stderr
