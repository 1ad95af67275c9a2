"""The access model with real clients (issue 9's "Proof / Real clients").

Two accounts on a Wharf that keeps every repository local: ``alice``, whose token may read and
write packages, and ``bob``, whose token may only read them.

- dockerd: ``docker login <wharf> -u alice -p TOKEN`` (Docker's token flow: the 401 challenge on
  ``/v2/``, ``/token`` with Basic, then a signed Bearer token), ``docker push`` and ``docker pull``
  back; bob, logged in with his read-only token, is refused his push with ``denied``;
- skopeo: ``copy --dest-creds alice:TOKEN`` into Wharf and ``inspect --creds``; bob's
  ``--dest-creds`` push is denied; an anonymous ``inspect`` of the private package is
  ``unauthorized``; once the package is public, anonymous ``inspect`` and ``copy`` succeed (and an
  anonymous push is still refused);
- python ``oras`` with alice's user name and token (its ``-u``/``-p``): push and pull an
  artifact; bob's push is refused (Wharf answers ``DENIED``; oras-py shows a message of its own).

Accounts and the package's visibility are written to Wharf's database directly (tests/support/
accounts.py), as ``wharf users``/``wharf tokens`` and the packages API would.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest

from support.accounts import add_token, add_user, basic
from support.images import MANIFEST_ACCEPT, make_image, sha256_digest
from support.servers import require_binary
from test_access import READ_ONLY, READ_WRITE, set_visibility, wait_for
from test_clients_e2e import (assert_dir_copy, client_env, clients_dir, containerd, dockerd, run,  # noqa: F401
                              run_status, skopeo_files)
from test_push_clients import docker_archive, host_of, summary

pytestmark = pytest.mark.clients

DENIED = re.compile(r"\bdenied\b", re.IGNORECASE)
UNAUTHORIZED = re.compile(r"\bunauthorized\b|authentication required", re.IGNORECASE)


async def with_accounts(wharf) -> dict[str, tuple[str, str]]:
    """``alice`` (read and write packages) and ``bob`` (read only): ``{name: (name, token)}``,
    once Wharf knows both."""
    accounts = {}
    for name, scopes in (("alice", READ_WRITE), ("bob", READ_ONLY)):
        add_user(wharf.database, name)
        accounts[name] = (name, add_token(wharf.database, name, scopes=scopes)[1])

    async def known() -> bool:
        async with aiohttp.ClientSession() as session:
            for account in accounts.values():
                async with session.get(f"{wharf.url}/v2/", headers={"Authorization": basic(*account)}) as resp:
                    if resp.status != 200:
                        return False
        return True

    assert await wait_for(known), "Wharf did not take the new accounts' tokens"
    return accounts


async def anonymous_status(wharf, path: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{wharf.url}{path}", headers={"Accept": MANIFEST_ACCEPT}) as resp:
            return resp.status


async def refused(argv: list[str], env: dict[str, str], reason: re.Pattern, diagnostics) -> str:
    """Run a client that must fail, for ``reason`` (seen in its output); returns the output."""
    status, stdout, stderr = await run_status(argv, env)
    output = stdout + stderr
    assert status not in (0, None), f"{' '.join(argv)}: {'succeeded' if status == 0 else 'timed out'}:\n" \
                                    f"{output}\n{diagnostics()}"
    assert reason.search(output), f"{' '.join(argv)} failed for another reason:\n{output}\n{diagnostics()}"
    return output


def dir_image(path: Path, image) -> Path:
    """``image`` as a skopeo ``dir:`` source."""
    path.mkdir()
    (path / "manifest.json").write_bytes(image.manifest)
    (path / "version").write_text("Directory Transport Version: 1.1\n")
    for digest, data in image.blobs.items():
        (path / digest.split(":", 1)[1]).write_bytes(data)
    return path


async def test_docker_login_push_and_pull_with_a_token_and_a_read_only_token_is_denied(
        make_wharf, clients_dir, dockerd, tmp_path):
    docker = require_binary("docker")
    wharf = await make_wharf(port=dockerd.mirror_port)  # the address dockerd takes as an insecure registry
    accounts = await with_accounts(wharf)
    host = host_of(wharf)
    # this test's login state only, never ~/.docker
    env = client_env(clients_dir / "home", DOCKER_HOST=dockerd.host, DOCKER_CONFIG=str(tmp_path / "docker-config"))

    def diagnostics() -> str:
        return f"Wharf saw:\n{summary(wharf)}\n--- dockerd log ---\n{dockerd.daemon.log_tail()}"

    ref = f"{host}/alice/app:1"
    archive, image_id = docker_archive(ref, "access-clients-docker")
    (tmp_path / "image.tar").write_bytes(archive)
    await run([docker, "load", "-i", str(tmp_path / "image.tar")], env, diagnostics=diagnostics)

    # not logged in: no push
    await refused([docker, "push", ref], env, UNAUTHORIZED, diagnostics)

    await run([docker, "login", host, "-u", "alice", "-p", accounts["alice"][1]], env, diagnostics=diagnostics)
    assert [s for s in wharf.seen if s.path == "/token" and s.status == 200
            and s.request_headers.get("Authorization", "").startswith("Basic ")], diagnostics()
    output = await run([docker, "push", ref], env, diagnostics=diagnostics)
    pushed_digest = re.search(r"digest: (sha256:[0-9a-f]{64})", output).group(1)
    pushes = [s for s in wharf.seen if s.method in ("POST", "PATCH", "PUT") and s.path.startswith("/v2/alice/app/")]
    assert pushes and all(s.request_headers.get("Authorization", "").startswith("Bearer ") for s in pushes), \
        diagnostics()  # docker pushed with the signed token /token gave it, not with Basic

    await run([docker, "rmi", ref], env, diagnostics=diagnostics)
    await run([docker, "pull", "-q", ref], env, diagnostics=diagnostics)
    inspect = [docker, "image", "inspect", "--format"]
    assert (await run([*inspect, "{{.Id}}", ref], env)).strip() == image_id
    assert (await run([*inspect, "{{index .RepoDigests 0}}", ref], env)).strip() == f"{host}/alice/app@{pushed_digest}"
    assert await anonymous_status(wharf, "/v2/alice/app/manifests/1") == 401  # private: alice's only

    # bob signs in with a read-only token: his push into his own namespace is denied
    await run([docker, "logout", host], env)
    await run([docker, "login", host, "-u", "bob", "-p", accounts["bob"][1]], env, diagnostics=diagnostics)
    bobs = f"{host}/bob/app:1"
    await run([docker, "tag", ref, bobs], env)
    output = await refused([docker, "push", bobs], env, DENIED, diagnostics)
    assert "write:packages" in output, output  # the scope the token lacks
    resp = await wharf.client.get("/v2/bob/app/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 404  # nothing was stored
    await run([docker, "rmi", ref, bobs], env)


async def test_skopeo_with_creds_private_until_public(make_wharf, clients_dir, tmp_path):
    skopeo = require_binary("skopeo")
    wharf = await make_wharf()
    accounts = await with_accounts(wharf)
    host = host_of(wharf)
    env = client_env(clients_dir / "home")
    options = [skopeo, *skopeo_files(clients_dir)]
    alice, bob = (":".join(accounts[name]) for name in ("alice", "bob"))
    image = make_image("access-clients-skopeo", (3000, 120_000), oci=True)
    source = dir_image(tmp_path / "source", image)
    ref = f"docker://{host}/alice/tool:1"

    def diagnostics() -> str:
        return f"Wharf saw:\n{summary(wharf)}"

    await run([*options, "copy", "--dest-tls-verify=false", "--dest-creds", alice, f"dir:{source}", ref], env,
              diagnostics=diagnostics)
    inspected = json.loads(await run([*options, "inspect", "--tls-verify=false", "--creds", alice, ref], env,
                                     diagnostics=diagnostics))
    assert inspected["Digest"] == image.digest
    # bob's token may read packages, but alice's is private to her; and it may not push, even to bob/
    output = await refused([*options, "inspect", "--tls-verify=false", "--creds", bob, ref], env, DENIED,
                           diagnostics)
    assert "role" in output, output  # the message says what bob lacks
    output = await refused([*options, "copy", "--dest-tls-verify=false", "--dest-creds", bob, f"dir:{source}",
                            f"docker://{host}/bob/tool:1"], env, DENIED, diagnostics)
    assert "write:packages" in output, output
    resp = await wharf.client.get("/v2/bob/tool/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 404

    # anonymous: the private package is not there for you
    wharf.seen.clear()
    await refused([*options, "inspect", "--tls-verify=false", ref], env, UNAUTHORIZED, diagnostics)
    assert [s for s in wharf.seen if s.path == "/v2/alice/tool/manifests/1" and s.status == 401], diagnostics()
    assert not [s for s in wharf.seen if s.path.startswith("/v2/alice/tool/") and s.status == 200], diagnostics()

    # public: anyone may pull it, nobody may push into it anonymously
    set_visibility(wharf.database, "alice/tool", "public")

    async def public() -> bool:
        return await anonymous_status(wharf, "/v2/alice/tool/manifests/1") == 200

    assert await wait_for(public), "the package did not become public"
    inspected = json.loads(await run([*options, "inspect", "--tls-verify=false", ref], env, diagnostics=diagnostics))
    assert inspected["Digest"] == image.digest
    await run([*options, "copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'anonymous'}"], env,
              diagnostics=diagnostics)
    assert_dir_copy(tmp_path / "anonymous", image)
    await refused([*options, "copy", "--dest-tls-verify=false", f"dir:{source}", f"docker://{host}/alice/tool:2"],
                  env, UNAUTHORIZED, diagnostics)


async def test_oras_push_and_pull_with_a_token_and_a_read_only_token_is_denied(make_wharf, tmp_path):
    oras_provider = pytest.importorskip("oras.provider", reason="python oras (PyPI) is a test dependency: pip install oras")
    wharf = await make_wharf()
    accounts = await with_accounts(wharf)
    host = host_of(wharf)
    notes = tmp_path / "notes.txt"
    notes.write_text("release notes for alice/notes\n")
    config = tmp_path / "config.json"
    config.write_text("{}")

    class Refusable(oras_provider.Registry):
        """oras-py retries a refused request 5 times, sleeping 3 + 5 + 11 + 29 + 83 s: not in a test."""
        do_request = oras_provider.Registry.do_request.__wrapped__

    def registry(account: tuple[str, str], kind=oras_provider.Registry):
        client = kind(hostname=host, insecure=True)
        client.auth.set_basic_auth(*account)  # oras's -u NAME -p TOKEN
        return client

    def push(account: tuple[str, str], repo: str, kind=oras_provider.Registry) -> None:
        registry(account, kind).push(target=f"{host}/{repo}:1", files=[f"{notes}:text/plain"],
                               manifest_config=f"{config}:application/vnd.example.notes.v1+json",
                               disable_path_validation=True)

    await asyncio.to_thread(push, accounts["alice"], "alice/notes")
    resp = await wharf.client.get("/v2/alice/notes/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200
    layers = json.loads(await resp.read())["layers"]
    assert [layer["digest"] for layer in layers] == [sha256_digest(notes.read_bytes())]
    assert await anonymous_status(wharf, "/v2/alice/notes/manifests/1") == 401

    def pull() -> list[str]:
        return registry(accounts["alice"]).pull(target=f"{host}/alice/notes:1", outdir=str(tmp_path / "pulled"))

    files = await asyncio.to_thread(pull)
    assert [Path(f).read_bytes() for f in files] == [notes.read_bytes()]

    # bob's read-only token: refused. oras-py raises its own message on a 403 ("Cannot respond to
    # request for authentication"), not the registry's, so Wharf's answer is read as oras got it.
    wharf.seen.clear()
    with pytest.raises(ValueError):
        await asyncio.to_thread(push, accounts["bob"], "bob/notes", Refusable)
    starts = [s for s in wharf.seen if s.method == "POST" and s.path == "/v2/bob/notes/blobs/uploads/"]
    assert starts and {s.status for s in starts} == {403}, summary(wharf)
    assert not [s for s in wharf.seen if s.path.startswith("/v2/bob/notes/") and s.method in ("PATCH", "PUT")]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{wharf.url}/v2/bob/notes/blobs/uploads/",
                                headers={"Authorization": basic(*accounts["bob"])}) as resp:
            assert resp.status == 403
            error = (await resp.json())["errors"][0]
    assert error["code"] == "DENIED" and "write:packages" in error["message"], error
    resp = await wharf.client.get("/v2/bob/notes/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 404
