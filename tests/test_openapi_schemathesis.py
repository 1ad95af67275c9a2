"""schemathesis against a running ``wharf serve``: every operation of /api/openapi.json, with a token,
bounded (20 examples per operation), answers without a 5xx and as the document says."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from support.accounts import add_org, add_token, add_user, basic
from support.images import make_image, make_index, push_image
from support.servers import free_port
from support.wharf_serve import start_wharf

from proxy.storage.database import Database, Package, bump_revision, database_url

# Most generated cases name the packages that exist (so deletes, restores and visibility changes
# act on real ones); the rest are whatever schemathesis makes of the schema.
CONFIG = """
[dictionaries.owners]
values = ["alice", "acme", "bob"]
[dictionaries.names]
values = ["app", "tools/cli", "service", "nothing"]
[dictionaries.ids]
values = [1, 2, 3, 4, 5, 6]

[parameters]
"path.username" = { dictionary = "owners", probability = 0.8 }
"path.org" = { dictionary = "owners", probability = 0.8 }
"path.package_name" = { dictionary = "names", probability = 0.8 }
"path.package_version_id" = { dictionary = "ids", probability = 0.8 }
"""
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


def _seed(url: str, root: Path) -> tuple[str, str]:
    """Accounts and packages for the run: alice's private, internal and public packages (one with a
    deleted version), an org package; returns alice's credentials."""
    db = Database(database_url(None, root))
    try:
        add_user(db, "alice")
        add_user(db, "bob")
        add_org(db, "acme", {"alice": "owner", "bob": "member"})
        _, secret = add_token(db, "alice")

        async def push() -> None:
            auth = ("alice", secret)
            await push_image(url, "alice/app", make_image("st-app", (64,)), "v1", auth=auth)
            await push_image(url, "alice/app", make_image("st-app-2", (64,)), "v2", auth=auth)
            await push_image(url, "alice/tools/cli", make_index("st-cli", (64,), oci=True), "v1", auth=auth)
            await push_image(url, "acme/service", make_image("st-svc", (64,)), "v1", auth=auth)

        asyncio.run(push())
        with db.session() as s:
            for repository, visibility in (("alice/tools/cli", "public"), ("acme/service", "internal")):
                s.scalar(select(Package).where(Package.repository == repository)).visibility = visibility
            bump_revision(s)
    finally:
        db.close()
    return "alice", secret


def _schemathesis() -> list[str]:
    return [str(Path(sys.executable).with_name("schemathesis"))]


def test_schemathesis_finds_no_server_error_and_no_departure_from_the_document(tmp_path):
    root = tmp_path / "store"
    port = free_port()
    wharf = start_wharf(tmp_path, {"listen": f"127.0.0.1:{port}", "storage": {"root": str(root)},
                                   "log": {"access_log": False}})
    try:
        user, secret = _seed(wharf.url, root)
        (tmp_path / "schemathesis.toml").write_text(CONFIG)
        run = subprocess.run(
            [*_schemathesis(), "--config-file", str(tmp_path / "schemathesis.toml"), "run", f"{wharf.url}/api/openapi.json", "--checks", CHECKS,
             "--max-examples", "20", "--seed", "9", "--workers", "1",
             "--request-timeout", "10", "--header", f"Authorization: {basic(user, secret)}",
             "--suppress-health-check", "all", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
        output = run.stdout + run.stderr
        (tmp_path / "schemathesis.txt").write_text(output)
        assert run.returncode == 0, output[-12000:] + "\n--- wharf ---\n" + wharf.output()[-4000:]
        assert "unhandled error" not in wharf.output()  # what the middleware logs for a handler's exception
    finally:
        wharf.stop()
