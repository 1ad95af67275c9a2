"""The audit log: one JSON line per change to who may do what (logins, token changes, pushes,
deletes, restores, visibility and roles) — who, what, when, from where.

Rules:
- a record is one line, written with one ``write`` to a file opened ``O_APPEND``: lines from
  several workers and the CLI never interleave (a line is far below what Linux appends at once);
- the file is the owner's alone (mode 0600): it names users and addresses;
- never a secret: callers pass names, ids and token hints only, and fields named like a
  credential (``secret``, ``token``, ``password``, ``secret_hash``...) are refused here as a last guard.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from proxy.config import Config

_SECRET_FIELDS = frozenset({"secret", "token", "password", "hash", "secret_hash", "credential", "credentials",
                            "authorization"})


def audit_path(config: Config) -> Path:
    """``access.audit_log``, or ``audit.log`` in the store."""
    return config.access.audit_log or config.storage.root / "audit.log"


def iso_time(epoch: float) -> str:
    """``2026-12-01T23:21:12.255Z``: how records (and their fields) write times."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends records to ``path`` (created 0600 at the first record)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def record(self, action: str, actor: str | None, remote: str | None = None, **fields) -> None:
        """Append ``{"time", "action", "actor", "remote", **fields}`` as one line.

        ``actor`` is the user who acted (None: anonymous; "cli" for an operator at the console).
        """
        for name in fields:
            if name.lower() in _SECRET_FIELDS:
                raise ValueError(f"audit records never carry secrets: field {name!r}")
        line = json.dumps({"time": iso_time(time.time()), "action": action, "actor": actor, "remote": remote,
                           **fields}, separators=(",", ":"), sort_keys=False, default=str) + "\n"
        data = line.encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            written = os.write(fd, data)
            if written != len(data):  # a full disk mid-line: end the torn line so the next one parses
                os.write(fd, b"\n")
        finally:
            os.close(fd)
