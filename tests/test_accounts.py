"""The accounts service (proxy.registry.accounts) on SQLite and PostgreSQL: users, organisations,
tokens, what authenticates, the revision every change bumps, and the audit trail."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zlib

import pytest

from proxy.registry.access import ANONYMOUS, Action, NamespaceFacts, check
from proxy.registry.accounts import (TOKEN_PREFIX, AccountError, Accounts, Conflict, NotFound, looks_like_token)
from proxy.registry.audit import AuditLog
from proxy.storage.database import Database

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def database(database_url):
    database = Database(database_url)
    database.upgrade()
    yield database
    database.close()


@pytest.fixture
def audit_path(tmp_path):
    return tmp_path / "audit" / "audit.log"


@pytest.fixture
def accounts(database, audit_path, clock) -> Accounts:
    return Accounts(database, AuditLog(audit_path), frozenset({"ghcr.io", "docker.io", "hub"}), clock=clock)


def audit_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# names -----------------------------------------------------------------------------------------
def test_users_and_orgs_are_listed_with_their_roles(accounts):
    accounts.add_user("alice", admin=True)
    accounts.add_user("bob")
    accounts.add_org("acme", owner="alice")
    accounts.add_member("acme", "bob")
    users = {u.name: u for u in accounts.list_users()}
    assert users["alice"].admin and not users["bob"].admin
    assert users["alice"].orgs == {"acme": "owner"} and users["bob"].orgs == {"acme": "member"}
    [org] = accounts.list_orgs()
    assert (org.name, org.members) == ("acme", {"alice": "owner", "bob": "member"})
    assert accounts.namespace("alice") == NamespaceFacts("alice", "user")
    assert accounts.namespace("acme") == NamespaceFacts("acme", "org")
    assert accounts.namespace("nobody") == NamespaceFacts("nobody", None)
    assert accounts.namespaces() == ["acme", "alice", "bob"]


@pytest.mark.parametrize("name, words", [
    ("Alice", "not a valid name"), ("al/ice", "not a valid name"), ("-alice", "not a valid name"),
    ("alice\n", "not a valid name"), ("", "not a valid name"), ("a" * 40, "longer than 39"),
    ("library", "official images"), ("ghcr.io", "upstream"), ("hub", "upstream"),
])
def test_names_that_cannot_be_taken(accounts, name, words):
    with pytest.raises(AccountError, match=words):
        accounts.add_user(name)
    accounts.add_user("owner")
    with pytest.raises(AccountError, match=words):
        accounts.add_org(name, owner="owner")
    assert accounts.namespaces() == ["owner"]


def test_a_39_character_name_is_fine(accounts):
    assert accounts.add_user("a" * 39).name == "a" * 39


def test_users_and_orgs_share_one_space_of_names(accounts):
    accounts.add_user("alice")
    with pytest.raises(Conflict, match="taken"):
        accounts.add_user("alice")
    with pytest.raises(Conflict, match="taken"):
        accounts.add_org("alice", owner="alice")
    accounts.add_org("acme", owner="alice")
    with pytest.raises(Conflict, match="taken .*organisation"):
        accounts.add_user("acme")
    assert [u.name for u in accounts.list_users()] == ["alice"]


def test_an_org_needs_an_existing_owner(accounts):
    with pytest.raises(NotFound, match="no user 'ghost'"):
        accounts.add_org("acme", owner="ghost")
    assert accounts.namespaces() == []


def test_members_and_roles(accounts):
    accounts.add_user("alice")
    accounts.add_user("bob")
    accounts.add_org("acme", owner="alice")
    with pytest.raises(AccountError, match="unknown role 'admin'"):
        accounts.add_member("acme", "bob", role="admin")
    with pytest.raises(NotFound, match="no organisation 'nope'"):
        accounts.add_member("nope", "bob")
    with pytest.raises(NotFound, match="no user 'carol'"):
        accounts.add_member("acme", "carol")
    assert accounts.add_member("acme", "bob", role="owner").members == {"alice": "owner", "bob": "owner"}
    assert accounts.add_member("acme", "bob", role="member").members == {"alice": "owner", "bob": "member"}
    with pytest.raises(Conflict, match="last owner"):
        accounts.add_member("acme", "alice", role="member")


# tokens ----------------------------------------------------------------------------------------
def test_a_token_has_githubs_shape_and_a_checksum(accounts):
    accounts.add_user("alice")
    info, secret = accounts.create_token("alice", ["write:packages", "read:packages"], note="ci")
    assert secret.startswith(TOKEN_PREFIX) and len(secret) == len(TOKEN_PREFIX) + 42
    body = secret[len(TOKEN_PREFIX):]
    assert set(body) <= set(BASE62)
    crc, number = zlib.crc32(body[:36].encode()), 0
    for char in body[36:]:
        number = number * 62 + BASE62.index(char)
    assert number == crc  # the last six characters are the CRC32 of the 36 before, in base62
    assert looks_like_token(secret)
    assert info.scopes == ("read:packages", "write:packages") and info.note == "ci"
    assert info.hint == secret[:14] and info.user == "alice"
    assert info.expires_at is None and info.revoked_at is None and info.last_used_at is None
    assert not hasattr(info, "secret_hash")
    _, other = accounts.create_token("alice", "read:packages")
    assert other != secret


def test_only_the_hash_is_stored(accounts, database):
    accounts.add_user("alice")
    _, secret = accounts.create_token("alice", "read:packages")
    with database.engine.connect() as connection:
        rows = [tuple(map(str, row)) for row in connection.exec_driver_sql("SELECT * FROM tokens")]
    flat = " ".join(" ".join(row) for row in rows)
    assert secret not in flat and secret[14:] not in flat
    assert hashlib.sha256(secret.encode()).hexdigest() in flat


@pytest.mark.parametrize("scopes, words", [
    (["read:packages", "admin:org"], "unknown scope.*admin:org"), ([], "at least one scope"),
    ("", "at least one scope"), ("read:package", "unknown scope.*read:package"),
])
def test_scopes_are_checked(accounts, scopes, words):
    accounts.add_user("alice")
    with pytest.raises(AccountError, match=words):
        accounts.create_token("alice", scopes)
    assert accounts.list_tokens("alice") == []


def test_tokens_of_unknown_users_and_bad_expiries(accounts):
    with pytest.raises(NotFound, match="no user 'ghost'"):
        accounts.create_token("ghost", "read:packages")
    with pytest.raises(NotFound, match="no user 'ghost'"):
        accounts.list_tokens("ghost")
    accounts.add_user("alice")
    for days in (0, -1, 1.5, True, "3"):
        with pytest.raises(AccountError, match="whole number of days"):
            accounts.create_token("alice", "read:packages", expires_days=days)


def test_authenticate(accounts, clock):
    accounts.add_user("alice", admin=True)
    accounts.add_user("bob")
    accounts.add_org("acme", owner="alice")
    info, secret = accounts.create_token("alice", "read:packages,delete:packages")
    principal = accounts.authenticate("alice", secret)
    assert principal is not None
    assert (principal.user, principal.admin, principal.token_id) == ("alice", True, info.id)
    assert principal.scopes == frozenset({"read:packages", "delete:packages"})
    assert principal.orgs == {"acme": "owner"}
    assert principal.user_id == accounts.user("alice").id
    assert accounts.principal("alice", info.id) == principal
    # another user's name, a wrong checksum, a changed character, not a token at all
    assert accounts.authenticate("bob", secret) is None
    assert accounts.principal("bob", info.id) is None
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert accounts.authenticate("alice", flipped) is None
    changed = secret[:20] + ("x" if secret[20] != "x" else "y") + secret[21:]
    assert accounts.authenticate("alice", changed) is None
    assert accounts.authenticate("alice", "s3cret-pass") is None
    assert accounts.authenticate("alice", "") is None


def test_a_bearer_token_names_no_user(accounts):
    accounts.add_user("alice")
    info, secret = accounts.create_token("alice", "read:packages")
    principal = accounts.authenticate(None, secret)
    assert principal is not None and principal.user == "alice" and principal.token_id == info.id
    accounts.revoke_token(info.id)
    assert accounts.authenticate(None, secret) is None


def test_a_token_with_a_valid_checksum_but_unknown_is_refused(accounts):
    from proxy.registry.accounts import new_secret

    accounts.add_user("alice")
    accounts.create_token("alice", "read:packages")
    assert accounts.authenticate("alice", new_secret()) is None


def test_an_expired_token_is_refused(accounts, clock):
    accounts.add_user("alice")
    info, secret = accounts.create_token("alice", "read:packages", expires_days=2)
    assert info.expires_at == clock.now + 2 * 86400
    clock.now += 2 * 86400 - 1
    assert accounts.authenticate("alice", secret).expires_at == info.expires_at  # signed tokens end with it
    clock.now += 1
    assert accounts.authenticate("alice", secret) is None
    assert accounts.principal("alice", info.id) is None
    assert accounts.list_tokens("alice")[0].state(clock.now) == "expired"


def test_a_revoked_token_is_refused_and_the_revision_moves(accounts, database):
    accounts.add_user("alice")
    info, secret = accounts.create_token("alice", "write:packages")
    before = database.revision()
    revoked = accounts.revoke_token(info.id)
    assert revoked.revoked_at is not None and revoked.state(revoked.revoked_at) == "revoked"
    assert database.revision() > before
    assert accounts.authenticate("alice", secret) is None
    assert accounts.principal("alice", info.id) is None
    again = database.revision()
    assert accounts.revoke_token(info.id) == revoked  # twice: no change
    assert database.revision() == again
    with pytest.raises(NotFound, match="no token with id 999"):
        accounts.revoke_token(999)


def test_a_user_revokes_only_their_own_tokens(accounts):
    accounts.add_user("alice")
    accounts.add_user("bob")
    info, secret = accounts.create_token("alice", "read:packages")
    with pytest.raises(NotFound):
        accounts.revoke_token(info.id, user="bob")
    assert accounts.authenticate("alice", secret) is not None
    accounts.revoke_token(info.id, user="alice")
    assert accounts.authenticate("alice", secret) is None


def test_list_tokens(accounts, clock):
    accounts.add_user("alice")
    accounts.add_user("bob")
    first, _ = accounts.create_token("alice", "read:packages", note="laptop")
    second, _ = accounts.create_token("alice", "write:packages", expires_days=30)
    accounts.create_token("bob", "read:packages")
    assert [t.id for t in accounts.list_tokens("alice")] == [first.id, second.id]
    assert [t.note for t in accounts.list_tokens("alice")] == ["laptop", ""]


def test_touching_tokens_records_the_last_use_without_a_revision(accounts, database, clock):
    accounts.add_user("alice")
    first, _ = accounts.create_token("alice", "read:packages")
    second, _ = accounts.create_token("alice", "read:packages")
    before = database.revision()
    accounts.touch_tokens({first.id: clock.now + 10, second.id: clock.now + 20})
    accounts.touch_tokens({first.id: clock.now + 5})  # an older batch arriving late changes nothing
    accounts.touch_tokens({})
    used = {t.id: t.last_used_at for t in accounts.list_tokens("alice")}
    assert used == {first.id: clock.now + 10, second.id: clock.now + 20}
    assert database.revision() == before


def test_every_change_bumps_the_revision(accounts, database):
    seen = [database.revision()]

    def moved() -> bool:
        seen.append(database.revision())
        return seen[-1] > seen[-2]

    accounts.add_user("alice")
    assert moved()
    accounts.add_user("bob")
    assert moved()
    accounts.add_org("acme", owner="alice")
    assert moved()
    accounts.add_member("acme", "bob")
    assert moved()
    accounts.add_member("acme", "bob", role="owner")
    assert moved()
    info, _ = accounts.create_token("alice", "read:packages")
    assert moved()
    accounts.revoke_token(info.id)
    assert moved()
    with pytest.raises(AccountError):
        accounts.add_user("alice")
    assert not moved()  # a refused change is no change


def test_a_new_namespace_is_local_to_the_access_decision(accounts):
    """What the guard gets from namespace(): alice may create packages in alice/ only."""
    accounts.add_user("alice")
    _, secret = accounts.create_token("alice", "write:packages")
    alice = accounts.authenticate("alice", secret)
    check(alice, Action.PUSH, "alice/app", accounts.namespace("alice"), None)
    with pytest.raises(Exception, match="only server admins"):
        check(alice, Action.PUSH, "nobody/app", accounts.namespace("nobody"), None)
    with pytest.raises(Exception, match="authentication required"):
        check(ANONYMOUS, Action.PUSH, "alice/app", accounts.namespace("alice"), None)


# the audit log ---------------------------------------------------------------------------------
def test_changes_are_audited_without_secrets(accounts, audit_path):
    accounts.add_user("alice", admin=True)
    accounts.add_org("acme", owner="alice")
    accounts.add_user("bob", actor="alice", remote="192.0.2.7")
    accounts.add_member("acme", "bob", role="member")
    info, secret = accounts.create_token("bob", "read:packages", note="ci", actor="alice", remote="192.0.2.7")
    accounts.revoke_token(info.id)
    records = audit_records(audit_path)
    assert [r["action"] for r in records] == ["user.add", "org.add", "user.add", "org.member",
                                              "token.create", "token.revoke"]
    created = records[4]
    assert (created["actor"], created["remote"], created["user"], created["token_id"]) == \
        ("alice", "192.0.2.7", "bob", info.id)
    assert created["hint"] == secret[:14] and created["scopes"] == ["read:packages"]
    assert records[0]["actor"] == "cli" and records[0]["remote"] is None
    assert all(r["time"].endswith("Z") and r["time"][:2] == "20" for r in records)
    text = audit_path.read_text()
    assert secret not in text and secret[14:] not in text
    assert hashlib.sha256(secret.encode()).hexdigest() not in text
    assert stat.S_IMODE(os.stat(audit_path).st_mode) == 0o600


def test_a_change_that_cannot_be_audited_is_not_made(database, tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    accounts = Accounts(database, AuditLog(tmp_path / "not-a-dir" / "audit.log"))
    before = database.revision()
    with pytest.raises(OSError):
        accounts.add_user("alice")
    assert accounts.list_users() == [] and accounts.namespaces() == []
    assert database.revision() == before
