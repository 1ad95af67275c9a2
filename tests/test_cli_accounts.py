"""The operator commands (``wharf users|orgs|tokens ...``), run as a real ``python -m proxy``
subprocess against a store, alone and while ``wharf serve`` runs on it."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time

import pytest
import yaml

from proxy.config import config_from_dict
from proxy.registry.accounts import Accounts, looks_like_token
from proxy.registry.audit import AuditLog
from proxy.storage.database import open_database
from support.servers import free_port
from support.wharf_serve import start_wharf, wharf_argv, wharf_env


def write_config(tmp_path, **overrides) -> tuple:
    config = {"listen": f"127.0.0.1:{free_port()}", "storage": {"root": str(tmp_path / "store")},
              "log": {"access_log": False}, **overrides}
    path = tmp_path / "wharf.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def wharf(config_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(wharf_argv(*args, "--config", str(config_path)), env=wharf_env(), capture_output=True,
                          text=True, timeout=60)


def ok(config_path, *args: str) -> list[str]:
    result = wharf(config_path, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def refused(config_path, *args: str, status: int = 1) -> str:
    """The one-line reason on stderr of a command that must be refused with ``status``."""
    result = wharf(config_path, *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status, (result.stdout, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    return lines[0]


def accounts_of(config: dict) -> tuple[Accounts, object]:
    database = open_database(config_from_dict(config))
    return Accounts(database, AuditLog(config["storage"]["root"] + "/audit.log")), database


@pytest.fixture
def store(tmp_path):
    return write_config(tmp_path)


def test_users_orgs_and_members(store):
    path, _ = store
    assert ok(path, "users", "add", "alice", "--admin") == ["user alice added (server admin)"]
    assert ok(path, "users", "add", "bob") == ["user bob added"]
    assert ok(path, "orgs", "add", "acme", "--owner", "alice") == ["organisation acme added, owner alice"]
    assert ok(path, "orgs", "members", "add", "acme", "bob") == ["bob is a member of acme"]
    header, *rows = ok(path, "users", "list")
    assert header.split() == ["NAME", "ADMIN", "ORGS", "CREATED"]
    assert [row.split()[:3] for row in rows] == [["alice", "yes", "acme(owner)"], ["bob", "no", "acme(member)"]]
    assert ok(path, "orgs", "members", "add", "acme", "bob", "--role", "owner") == ["bob is an owner of acme"]
    header, row = ok(path, "orgs", "list")
    assert row.split()[:2] == ["acme", "alice(owner),bob(owner)"]


def test_a_token_is_the_last_line_and_works(store):
    path, config = store
    ok(path, "users", "add", "alice")
    out = ok(path, "tokens", "create", "alice", "--scopes", "read:packages,write:packages", "--expires", "30",
             "--note", "ci runner")
    secret = out[-1]
    assert looks_like_token(secret) and secret.startswith("wharf_pat_")
    assert "read:packages,write:packages" in out[0] and "expires" in out[0]
    accounts, database = accounts_of(config)
    try:
        principal = accounts.authenticate("alice", secret)
        assert principal is not None and principal.scopes == {"read:packages", "write:packages"}
        [token] = accounts.list_tokens("alice")
        assert token.note == "ci runner" and token.expires_at is not None
    finally:
        database.close()
    listing = "\n".join(ok(path, "tokens", "list", "alice"))
    assert secret not in listing and secret[14:] not in listing
    assert secret[:14] + "..." in listing and "ci runner" in listing and "active" in listing
    assert ok(path, "tokens", "revoke", str(token.id)) == [f"token {token.id} of alice ({secret[:14]}...) revoked"]
    assert "revoked" in ok(path, "tokens", "list", "alice")[1]
    accounts, database = accounts_of(config)
    try:
        assert accounts.authenticate("alice", secret) is None
    finally:
        database.close()
    audit = (path.parent / "store" / "audit.log").read_text()
    assert secret not in audit and hashlib.sha256(secret.encode()).hexdigest() not in audit
    assert '"action":"token.create"' in audit and '"action":"token.revoke"' in audit


def test_refusals_are_one_line_and_exit_1(store):
    path, _ = store
    ok(path, "users", "add", "alice")
    assert "'alice' is taken" in refused(path, "users", "add", "alice")
    assert "'alice' is taken" in refused(path, "orgs", "add", "alice", "--owner", "alice")
    assert "official images" in refused(path, "users", "add", "library")
    assert "not a valid name" in refused(path, "users", "add", "Alice")
    assert "no user 'ghost'" in refused(path, "orgs", "add", "acme", "--owner", "ghost")
    assert "no user 'ghost'" in refused(path, "tokens", "create", "ghost", "--scopes", "read:packages")
    assert "no user 'ghost'" in refused(path, "tokens", "list", "ghost")
    assert "unknown scope(s) admin:org" in refused(path, "tokens", "create", "alice", "--scopes",
                                                    "read:packages,admin:org")
    assert "whole number of days" in refused(path, "tokens", "create", "alice", "--scopes", "read:packages",
                                             "--expires", "0")
    assert "no token with id 42" in refused(path, "tokens", "revoke", "42")
    assert "no organisation 'acme'" in refused(path, "orgs", "members", "add", "acme", "alice")
    assert ok(path, "tokens", "list", "alice") == ["ID  TOKEN  SCOPES  STATE  CREATED  EXPIRES  LAST USED  NOTE"]


def test_usage_and_config_errors_exit_2(tmp_path, store):
    path, _ = store
    assert wharf(path, "tokens", "create", "alice").returncode == 2  # --scopes is required
    assert wharf(path, "orgs", "members", "add", "acme", "bob", "--role", "admin").returncode == 2
    assert "cannot read config" in refused(tmp_path / "missing.yaml", "users", "list", status=2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: -3\n")
    assert "workers" in refused(bad, "users", "list", status=2)


def test_upstream_names_are_reserved_and_the_default_upstream_is_warned_about(tmp_path):
    path, _ = write_config(tmp_path, upstreams=[{"name": "docker.io", "url": "https://registry-1.docker.io",
                                                 "aliases": ["hub"]}], default_upstream="docker.io")
    assert "upstream registry" in refused(path, "users", "add", "hub")
    assert "upstream registry" in refused(path, "users", "add", "docker.io")
    out = ok(path, "users", "add", "alice")
    assert out[0] == "user alice added"
    assert "alice/ is now a local namespace" in out[1] and "docker.io" in out[1]
    out = ok(path, "orgs", "add", "acme", "--owner", "alice")
    assert "acme/ is now a local namespace" in out[1]


def test_no_note_without_a_default_upstream(store):
    path, _ = store
    assert ok(path, "users", "add", "alice") == ["user alice added"]


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path):
    port = free_port()  # nothing listens there
    path, _ = write_config(tmp_path, database={"url": f"postgresql+psycopg://wharf:hunter2@127.0.0.1:{port}/wharf"})
    line = refused(path, "users", "list")
    assert line.startswith("wharf: database.url: cannot open postgresql+psycopg://wharf:***@127.0.0.1:")
    assert "hunter2" not in line


@pytest.mark.parametrize("url", ["nonsense://x", "::::"])
def test_a_url_that_is_no_database_url_is_a_config_error(tmp_path, url):
    path, _ = write_config(tmp_path, database={"url": url})
    assert refused(path, "users", "list", status=2).startswith("wharf: database.url: ")


def test_commands_work_while_serve_runs(tmp_path):
    """Two workers start while the CLI adds users: everybody migrates the store's database at once,
    nobody fails, and the server keeps answering."""
    path, config = write_config(tmp_path, workers=2)
    results: list[subprocess.CompletedProcess] = []
    adders = [threading.Thread(target=lambda n=n: results.append(wharf(path, "users", "add", f"user{n}")))
              for n in range(3)]
    for adder in adders:
        adder.start()
    server = start_wharf(tmp_path / "serve", config)
    try:
        for adder in adders:
            adder.join()
        assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
        ok(path, "users", "add", "alice")
        secret = ok(path, "tokens", "create", "alice", "--scopes", "read:packages")[-1]
        header, *rows = ok(path, "users", "list")
        assert [row.split()[0] for row in rows] == ["alice", "user0", "user1", "user2"]
        import urllib.request

        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as response:
            assert response.status == 200
        assert looks_like_token(secret)
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def _status(url: str, authorization: str) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": authorization})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_token_made_and_revoked_at_the_console_works_and_stops_on_the_running_server(tmp_path):
    from support.accounts import basic

    path, config = write_config(tmp_path, workers=2)
    server = start_wharf(tmp_path / "serve", config)
    try:
        ok(path, "users", "add", "alice")
        secret = ok(path, "tokens", "create", "alice", "--scopes", "read:packages")[-1]
        url = server.url + "/api/user/tokens"
        for _ in range(8):  # each worker in turn (the kernel spreads connections over them)
            assert _status(url, basic("alice", secret)) == 200
        token_id = ok(path, "tokens", "list", "alice")[1].split()[0]
        ok(path, "tokens", "revoke", token_id)
        deadline = time.monotonic() + 10  # workers poll the revision every 0.1 s
        while _status(url, basic("alice", secret)) != 401:
            assert time.monotonic() < deadline, "the revoked token still signs in"
        for _ in range(3):  # on every worker (a few only: five failed sign-ins are throttled)
            assert _status(url, basic("alice", secret)) == 401
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_with_an_unreachable_database_is_one_line(tmp_path, workers):
    from support.wharf_serve import assert_one_line_refusal, start_failure

    config = {"listen": f"127.0.0.1:{free_port()}", "storage": {"root": str(tmp_path / "store")},
              "workers": workers, "database": {"url": f"postgresql+psycopg://wharf:hunter2@127.0.0.1:{free_port()}/w"}}
    status, stderr = start_failure(tmp_path, config)
    assert_one_line_refusal(status, stderr, "database.url", "cannot open")
    assert "hunter2" not in stderr
