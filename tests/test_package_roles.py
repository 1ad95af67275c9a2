"""Roles on a package (read / write / admin, for a user or for an organisation's members as a group),
granted and removed through the packages API and the ``wharf packages`` CLI; real pushes, real pulls
over /v2/, real tokens."""

from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import quote

import aiohttp
import pytest
import yaml

from support.accounts import add_org, add_token, add_user, basic
from support.images import MANIFEST_ACCEPT, PushError, make_image, push_image
from support.wharf_serve import wharf_argv, wharf_env

from proxy.http.keys import CONFIG

ALLOWED_WITHIN = 10.0  # seconds a CLI change may take to reach the server (it polls every 0.1 s)


class Crew:
    """alice (owns alice/), bob, carol (member of the org crew), dave (in no org); a token of every
    scope each, and one of alice's that may only read."""

    def __init__(self, wharf) -> None:
        self.wharf = wharf
        db = wharf.database
        for name in ("alice", "bob", "carol", "dave"):
            add_user(db, name)
        add_org(db, "crew", {"carol": "member"})
        self.secrets = {name: add_token(db, name)[1] for name in ("alice", "bob", "carol", "dave")}
        self.alice_read_only = add_token(db, "alice", ("read:packages",))[1]
        self.root = wharf.app[CONFIG].storage.root

    async def call(self, method: str, path: str, who: str | None = None, secret: str | None = None,
                   **kwargs) -> tuple[int, dict | list | None, dict]:
        """(status, JSON body or None, headers) of one request with ``who``'s credentials."""
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers["Authorization"] = basic(who, secret or self.secrets[who])
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.wharf.url + path, headers=headers, **kwargs) as resp:
                body = await resp.read()
                parsed = json.loads(body) if body and resp.content_type == "application/json" else None
                return resp.status, parsed, dict(resp.headers)

    async def push(self, who: str, repository: str, tag: str) -> None:
        await push_image(self.wharf.url, repository, make_image(f"{repository}:{tag}:{uuid.uuid4()}", (64,)), tag,
                         auth=(who, self.secrets[who]))

    async def pull(self, who: str | None, repository: str, tag: str = "v1") -> int:
        status, _, _ = await self.call("GET", f"/v2/{repository}/manifests/{tag}", who,
                                       headers={"Accept": MANIFEST_ACCEPT})
        return status

    async def pulls_within(self, who: str, repository: str, expected: int) -> int:
        """Pull until the answer is ``expected`` (a change made elsewhere arrives at the next poll)."""
        deadline = asyncio.get_running_loop().time() + ALLOWED_WITHIN
        while True:
            status = await self.pull(who, repository)
            if status == expected or asyncio.get_running_loop().time() > deadline:
                return status
            await asyncio.sleep(0.05)

    def audit(self, action: str) -> list[dict]:
        path = self.root / "audit.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [r for r in map(json.loads, lines) if r["action"] == action]

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """``wharf packages ARGS --config`` on this Wharf's store, as an operator runs it."""
        config = self.root.parent / f"{self.root.name}-cli.yaml"
        config.write_text(yaml.safe_dump({"storage": {"root": str(self.root)}, "log": {"access_log": False}}))
        process = await asyncio.create_subprocess_exec(
            *wharf_argv("packages", *args, "--config", str(config)), env=wharf_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode, out.decode(), err.decode()

    async def cli_ok(self, *args: str) -> str:
        status, out, err = await self.cli(*args)
        assert status == 0, err
        return out

    async def cli_refused(self, *args: str) -> str:
        status, out, err = await self.cli(*args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 1 and out == "", (status, out, err)
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0]


@pytest.fixture
async def crew(make_wharf) -> Crew:
    return Crew(await make_wharf(auth=None))


def roles_path(repository: str, grantee: str = "") -> str:
    owner, _, name = repository.partition("/")
    return f"/api/users/{owner}/packages/container/{quote(name, safe='')}/roles{grantee}"


async def test_a_granted_reader_pulls_at_once_and_a_revoked_one_cannot(crew):
    repository = f"alice/tools-{uuid.uuid4().hex[:6]}/app"  # a name with /, sent as %2F
    await crew.push("alice", repository, "v1")
    assert await crew.pull("bob", repository) == 403

    status, body, _ = await crew.call("PUT", roles_path(repository, "/users/bob"), "alice", json={"role": "read"})
    assert (status, body) == (200, {"user": "bob", "role": "read"})
    assert await crew.pull("bob", repository) == 200  # this process acts on its own change at once
    assert await crew.pull("dave", repository) == 403
    with pytest.raises(PushError, match="-> 403"):  # reading is not writing
        await crew.push("bob", repository, "v2")
    status, body, _ = await crew.call("GET", roles_path(repository), "alice")
    assert (status, body) == (200, [{"user": "alice", "role": "admin"}, {"user": "bob", "role": "read"}])

    status, _, _ = await crew.call("DELETE", roles_path(repository, "/users/bob"), "alice")
    assert status == 204
    assert await crew.pull("bob", repository) == 403  # remembered answers to bob went with the role
    status, body, _ = await crew.call("GET", roles_path(repository), "alice")
    assert body == [{"user": "alice", "role": "admin"}]

    granted, removed = crew.audit("role")
    assert granted["actor"] == removed["actor"] == "alice"
    assert (granted["repository"], granted["user"], granted["role"], granted["previous_role"]) == (
        repository, "bob", "read", None)
    assert (removed["user"], removed["role"], removed["previous_role"]) == ("bob", None, "read")
    assert not any(secret in (crew.root / "audit.log").read_text() for secret in crew.secrets.values())


async def test_a_granted_writer_pushes_but_may_not_grant(crew):
    repository = f"alice/app-{uuid.uuid4().hex[:6]}"
    await crew.push("alice", repository, "v1")
    with pytest.raises(PushError, match="-> 403"):
        await crew.push("bob", repository, "v2")
    status, _, _ = await crew.call("PUT", roles_path(repository, "/users/bob"), "alice", json={"role": "write"})
    assert status == 200
    await crew.push("bob", repository, "v2")
    assert await crew.pull("bob", repository, "v2") == 200

    for method, path, body in (("PUT", "/users/dave", {"role": "read"}), ("DELETE", "/users/alice", None),
                               ("GET", "", None)):
        status, answer, _ = await crew.call(method, roles_path(repository, path), "bob", json=body)
        assert status == 403, (method, path, status, answer)
        assert "admin role" in answer["message"] and answer["documentation_url"].startswith("https://")
    assert await crew.pull("dave", repository) == 403

    # a token that may only read cannot grant, even its user's own package
    status, answer, _ = await crew.call("PUT", roles_path(repository, "/users/dave"), "alice",
                                        crew.alice_read_only, json={"role": "read"})
    assert status == 403 and "write:packages" in answer["message"]


async def test_an_org_role_reaches_its_members_as_a_group(crew):
    repository = f"alice/app-{uuid.uuid4().hex[:6]}"
    await crew.push("alice", repository, "v1")
    assert await crew.pull("carol", repository) == 403
    status, body, _ = await crew.call("PUT", roles_path(repository, "/orgs/crew"), "alice", json={"role": "read"})
    assert (status, body) == (200, {"org": "crew", "role": "read"})
    assert await crew.pull("carol", repository) == 200  # a member of crew
    assert await crew.pull("dave", repository) == 403   # in no org
    status, body, _ = await crew.call("PUT", roles_path(repository, "/orgs/crew"), "alice", json={"role": "write"})
    assert body == {"org": "crew", "role": "write"}
    await crew.push("carol", repository, "v2")
    status, body, _ = await crew.call("GET", roles_path(repository), "alice")
    assert body == [{"user": "alice", "role": "admin"}, {"org": "crew", "role": "write"}]

    status, _, _ = await crew.call("DELETE", roles_path(repository, "/orgs/crew"), "alice")
    assert status == 204
    assert await crew.pull("carol", repository) == 403


async def test_anonymous_callers_and_bad_requests_get_github_errors(crew):
    repository = f"alice/app-{uuid.uuid4().hex[:6]}"
    await crew.push("alice", repository, "v1")
    for method, path, body in (("GET", "", None), ("PUT", "/users/bob", {"role": "read"}),
                               ("DELETE", "/users/bob", None)):
        status, answer, headers = await crew.call(method, roles_path(repository, path), json=body)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), (method, path, status)
        assert answer["message"]

    cases = [("PUT", "/users/bob", {"json": {"role": "owner"}}, "alice", 422),
             ("PUT", "/users/bob", {"json": {"role": None}}, "alice", 422),
             ("PUT", "/users/bob", {"json": {}}, "alice", 422),
             ("PUT", "/users/bob", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, "alice",
              400),
             ("PUT", "/users/bob", {"json": ["read"]}, "alice", 400),
             ("PUT", "/users/nobody", {"json": {"role": "read"}}, "alice", 404),
             ("DELETE", "/orgs/noorg", {}, "alice", 404),
             ("PUT", "/users/bob", {"json": {"role": "read"}}, "bob", 404)]  # bob may not even read it
    for method, path, kwargs, who, expected in cases:
        status, answer, _ = await crew.call(method, roles_path(repository, path), who, **kwargs)
        assert status == expected, (method, path, kwargs, status, answer)
        assert answer["message"] and answer["documentation_url"].startswith("https://")
    status, answer, _ = await crew.call("GET", roles_path("alice/nothing-here"), "alice")
    assert status == 404
    assert await crew.pull("bob", repository) == 403  # nothing above gave bob anything
    assert crew.audit("role") == []


async def test_operators_grant_revoke_and_publish_with_the_cli(crew):
    repository = f"alice/app-{uuid.uuid4().hex[:6]}"
    await crew.push("alice", repository, "v1")
    assert await crew.pull("bob", repository) == 403

    out = await crew.cli_ok("grant", repository, "--user", "bob", "--role", "read")
    assert "bob" in out and "read" in out
    assert await crew.pulls_within("bob", repository, 200) == 200  # the server sees it at its next poll
    await crew.cli_ok("revoke", repository, "--user", "bob")
    assert await crew.pulls_within("bob", repository, 403) == 403

    await crew.cli_ok("grant", repository, "--org", "crew", "--role", "write")
    assert await crew.pulls_within("carol", repository, 200) == 200
    await crew.push("carol", repository, "v2")
    assert await crew.pull("dave", repository) == 403

    listed = await crew.cli_ok("list", "--owner", "alice")
    row = next(line for line in listed.splitlines() if line.startswith(repository + " "))
    assert row.split()[1:4] == ["private", "2", "alice(admin),org:crew(write)"]

    assert await crew.pull(None, repository) == 401
    out = await crew.cli_ok("visibility", repository, "public")
    assert "public" in out
    assert await crew.pulls_within(None, repository, 200) == 200  # anyone, anonymously
    records = crew.audit("role")
    assert [(r["actor"], r.get("user"), r.get("org"), r["role"]) for r in records] == [
        ("cli", "bob", None, "read"), ("cli", "bob", None, None), ("cli", None, "crew", "write")]
    assert crew.audit("visibility")[-1]["actor"] == "cli"


async def test_the_cli_says_in_one_line_what_it_refuses(crew):
    repository = f"alice/app-{uuid.uuid4().hex[:6]}"
    await crew.push("alice", repository, "v1")
    assert "no such user: nobody" in await crew.cli_refused("grant", repository, "--user", "nobody",
                                                            "--role", "read")
    assert "no such organization: noorg" in await crew.cli_refused("revoke", repository, "--org", "noorg")
    assert "role must be one of read, write, admin" in await crew.cli_refused(
        "grant", repository, "--user", "bob", "--role", "owner")
    assert "not found" in await crew.cli_refused("grant", "alice/nothing-here", "--user", "bob", "--role", "read")
    assert "OWNER/NAME" in await crew.cli_refused("grant", "noslash", "--user", "bob", "--role", "read")
    assert "visibility must be one of" in await crew.cli_refused("visibility", repository, "secret")
    assert "no such user or organization" in await crew.cli_refused("list", "--owner", "nobody")
    assert await crew.pull("bob", repository) == 403
