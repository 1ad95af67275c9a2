"""The audit log (proxy.registry.audit): whole JSON lines from several processes at once, the
owner's alone, and no field that carries a credential."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from proxy.config import config_from_dict
from proxy.registry.audit import AuditLog, audit_path
from support.wharf_serve import wharf_env

_WRITER = """
import sys
from proxy.registry.audit import AuditLog
log = AuditLog(sys.argv[1])
for i in range(300):
    log.record("push", "writer" + sys.argv[2], "192.0.2.1", repository="a/" + "x" * 3000, n=i)
"""


def test_several_processes_append_whole_lines(tmp_path):
    path = tmp_path / "audit.log"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n)], env=wharf_env())
               for n in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 4
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1200
    for n in range(4):
        assert [r["n"] for r in records if r["actor"] == f"writer{n}"] == list(range(300))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_record(tmp_path):
    log = AuditLog(tmp_path / "deep" / "audit.log")
    log.record("token.revoke", "alice", "2001:db8::1", token_id=7, user="alice")
    [record] = [json.loads(line) for line in (tmp_path / "deep" / "audit.log").read_text().splitlines()]
    assert record["action"] == "token.revoke" and record["actor"] == "alice"
    assert record["remote"] == "2001:db8::1" and record["token_id"] == 7
    assert record["time"].endswith("Z") and "T" in record["time"]


@pytest.mark.parametrize("field", ["secret", "token", "password", "secret_hash", "Authorization"])
def test_fields_named_like_credentials_are_refused(tmp_path, field):
    log = AuditLog(tmp_path / "audit.log")
    with pytest.raises(ValueError, match="never carry secrets"):
        log.record("login", "alice", **{field: "wharf_pat_x"})
    assert not (tmp_path / "audit.log").exists()


def test_the_default_path_is_in_the_store_or_the_configured_one(tmp_path):
    store = config_from_dict({"storage": {"root": str(tmp_path / "store")}})
    assert audit_path(store) == tmp_path / "store" / "audit.log"
    chosen = config_from_dict({"storage": {"root": str(tmp_path / "store")},
                               "access": {"audit_log": str(tmp_path / "logs" / "wharf-audit.jsonl")}})
    assert audit_path(chosen) == tmp_path / "logs" / "wharf-audit.jsonl"
