"""No client secret at rest: Wharf's tokens carry the credential encrypted, nothing is stored,
and what is keyed by a credential (meta store readers, authorization and negative caches) is keyed
by an HMAC of it, not a bare hash.

After a ``docker login``-style flow (``GET /token`` with Basic, then pulls with the Bearer token)
neither the password nor its base64 form is in any file under ``storage.root``, in Redis, in the
logs or in ``/metrics``; tokens still expire, work across workers and replicas, and a tampered
one counts as no credential.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import stat
import time
from pathlib import Path

import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from support.fake_upstream import FakeRegistry
from support.images import MANIFEST_ACCEPT, make_image, push_image

from proxy.registry.tokens import TOKEN_TTL

PRIVATE = "org/secret"
PASSWORD = "alice-at-rest-pw"


def _secrets(username: str, password: str) -> list[bytes]:
    """Every form of the credential that must not be found: the password, user:password, base64,
    and its bare (unkeyed) hash, which could be tested offline against guessed passwords."""
    pair = f"{username}:{password}".encode()
    bare_hash = hashlib.sha256(b"basic:" + base64.b64encode(pair)).hexdigest()[:32].encode()
    return [password.encode(), pair, base64.b64encode(pair), bare_hash]


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {needle!r}" for needle in needles if needle in data]
    return found


async def _redis_holding(url: str, needles: list[bytes]) -> list[str]:
    client = aioredis.from_url(url)
    found = []
    try:
        async for key in client.scan_iter(count=1000):
            value = await client.dump(key) or b""
            found += [f"{key!r}: {needle!r}" for needle in needles if needle in key or needle in value]
    finally:
        await client.aclose()
    return found


async def _token(wharf, headers: dict[str, str], scope: str | None = None) -> str:
    params = {"service": "wharf", **({"scope": scope} if scope else {})}
    resp = await wharf.client.get("/token", params=params, headers=headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["token"]


async def _pull(wharf, name: str, image, token: str) -> None:
    """A whole pull with the Bearer token: manifest by tag, config and layers by digest."""
    bearer = {"Authorization": f"Bearer {token}"}
    resp = await wharf.client.get(f"/v2/{name}/manifests/v1", headers={**bearer, "Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == image.manifest
    for digest, data in image.blobs.items():
        resp = await wharf.client.get(f"/v2/{name}/blobs/{digest}", headers=bearer)
        assert resp.status == 200 and await resp.read() == data


async def test_login_and_pull_leave_no_secret_in_the_store_logs_or_metrics(
        auth_registry_upstream, make_wharf, repo_name, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    image = make_image("at-rest", (3000,))
    await push_image(auth_registry_upstream.url, repo_name, image, tag="v1", auth=auth_registry_upstream.auth)
    root = tmp_path / "store"
    wharf = await make_wharf(auth_registry_upstream.url, storage={"root": str(root)})
    name = f"{wharf.upstream_name(auth_registry_upstream.url)}/{repo_name}"
    token = await _token(wharf, auth_registry_upstream.headers, f"repository:{name}:pull")
    await _pull(wharf, name, image, token)
    await _pull(wharf, name, image, token)  # served from the cache, upstream re-asked for access
    metrics = await (await wharf.client.get("/metrics")).read()
    needles = _secrets(auth_registry_upstream.username, auth_registry_upstream.password)
    await wharf.client.close()  # stores flushed and closed: everything that would reach disk has
    assert _files_holding(root, needles) == []
    assert not any(needle in metrics for needle in needles)
    assert not any(needle.decode() in caplog.text for needle in needles)
    assert not any(needle.decode() in token for needle in needles)


async def test_with_redis_no_secret_reaches_redis(auth_registry_upstream, make_wharf, repo_name, redis_url, tmp_path):
    image = make_image("at-rest-redis", (3000,))
    await push_image(auth_registry_upstream.url, repo_name, image, tag="v1", auth=auth_registry_upstream.auth)
    root = tmp_path / "store"
    wharf = await make_wharf(auth_registry_upstream.url, storage={"root": str(root)}, redis={"url": redis_url})
    name = f"{wharf.upstream_name(auth_registry_upstream.url)}/{repo_name}"
    token = await _token(wharf, auth_registry_upstream.headers, f"repository:{name}:pull")
    await _pull(wharf, name, image, token)
    needles = _secrets(auth_registry_upstream.username, auth_registry_upstream.password)
    assert await _redis_holding(redis_url, needles) == []
    await wharf.client.close()
    assert _files_holding(root, needles) == []


async def test_with_a_key_file_redis_holds_no_token_key(fake_upstream, make_wharf, tmp_path, redis_url):
    key = Fernet.generate_key()
    (tmp_path / "token.key").write_bytes(key)
    fake, wharf, name, image = await _private_setup(fake_upstream, make_wharf, redis={"url": redis_url},
                                                    tokens={"key_file": str(tmp_path / "token.key")})
    token = await _token(wharf, _basic("alice", PASSWORD))
    assert await _manifest_status(wharf, name, token) == 200
    assert await _redis_holding(redis_url, [key]) == []


async def _private_setup(fake_upstream, make_wharf, **overrides):
    fake: FakeRegistry = await fake_upstream()
    fake.require_bearer(users={"alice": PASSWORD}, private={PRIVATE})
    image = make_image("private", (1000,))
    fake.add_image(PRIVATE, image, tag="v1")
    wharf = await make_wharf(fake.url, **overrides)
    return fake, wharf, f"{wharf.upstream_name(fake.url)}/{PRIVATE}", image


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _manifest_status(wharf, name: str, token: str) -> int:
    resp = await wharf.client.get(f"/v2/{name}/manifests/v1",
                                  headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT})
    return resp.status


async def test_a_tampered_or_forged_token_counts_as_no_credential(fake_upstream, make_wharf):
    fake, wharf, name, image = await _private_setup(fake_upstream, make_wharf)
    token = await _token(wharf, _basic("alice", PASSWORD))
    assert await _manifest_status(wharf, name, token) == 200
    body = token[len("wharf."):]
    flipped = body[:20] + ("A" if body[20] != "A" else "B") + body[21:]
    forged = "wharf." + Fernet(Fernet.generate_key()).encrypt(
        base64.b64encode(f"alice:{PASSWORD}".encode())).decode()
    for bad in ("wharf." + flipped, forged, "wharf.not-a-token", token + "x"):
        resp = await wharf.client.get(f"/v2/{name}/manifests/v1",
                                      headers={"Authorization": f"Bearer {bad}", "Accept": MANIFEST_ACCEPT})
        assert resp.status == 401, bad
        assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
        assert resp.headers["WWW-Authenticate"].startswith(f'Bearer realm="{wharf.url}/token"')


async def test_a_token_expires_after_token_ttl(fake_upstream, make_wharf, tmp_path):
    root = tmp_path / "store"
    fake, wharf, name, image = await _private_setup(fake_upstream, make_wharf, storage={"root": str(root)})
    await _token(wharf, _basic("alice", PASSWORD))  # the store's key exists from now on
    key = Fernet((root / "keys" / "token.key").read_bytes())
    secret = base64.b64encode(f"alice:{PASSWORD}".encode())
    young = "wharf." + key.encrypt_at_time(secret, int(time.time()) - TOKEN_TTL + 60).decode()
    old = "wharf." + key.encrypt_at_time(secret, int(time.time()) - TOKEN_TTL - 60).decode()
    assert await _manifest_status(wharf, name, young) == 200
    assert await _manifest_status(wharf, name, old) == 401


async def test_the_store_key_is_private_and_shared_by_the_workers_of_a_store(fake_upstream, make_wharf, tmp_path):
    root = tmp_path / "store"
    fake, first, name, image = await _private_setup(fake_upstream, make_wharf, storage={"root": str(root)})
    second = await make_wharf(fake.url, storage={"root": str(root)})  # another worker on the same store
    token = await _token(first, _basic("alice", PASSWORD))
    assert await _manifest_status(second, name, token) == 200
    key_file = root / "keys" / "token.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "shared").stat().st_mode) == 0o700
    assert [p.name for p in key_file.parent.iterdir()] == ["token.key"]
    # a Wharf on another store has another key: the token means nothing there
    other = await make_wharf(fake.url, storage={"root": str(tmp_path / "other")})
    assert await _manifest_status(other, name, token) == 401


async def test_replicas_with_one_key_file_accept_each_others_tokens(fake_upstream, make_wharf, tmp_path):
    key_file = tmp_path / "token.key"
    key_file.write_bytes(Fernet.generate_key())
    tokens = {"key_file": str(key_file)}
    fake, first, name, image = await _private_setup(fake_upstream, make_wharf, tokens=tokens,
                                                    storage={"root": str(tmp_path / "a")})
    second = await make_wharf(fake.url, tokens=tokens, storage={"root": str(tmp_path / "b")})
    token = await _token(first, _basic("alice", PASSWORD))
    assert await _manifest_status(second, name, token) == 200
    assert not (tmp_path / "a" / "keys").exists(), "a configured key file makes the store's key unneeded"


async def test_replicas_sharing_redis_agree_on_a_key(
        fake_upstream, make_wharf, tmp_path, redis_url):
    fake, first, name, image = await _private_setup(fake_upstream, make_wharf, redis={"url": redis_url},
                                                    storage={"root": str(tmp_path / "a")})
    second = await make_wharf(fake.url, redis={"url": redis_url}, storage={"root": str(tmp_path / "b")})
    token = await _token(first, _basic("alice", PASSWORD))
    assert await _manifest_status(second, name, token) == 200
    assert await _manifest_status(first, name, await _token(second, _basic("alice", PASSWORD))) == 200


def test_a_key_file_that_holds_no_key_stops_wharf_at_start_naming_the_key(tmp_path):
    import pytest

    from proxy.config import ConfigError, config_from_dict

    bad = tmp_path / "token.key"
    bad.write_text("not a key\n")
    for path in (bad, tmp_path / "missing.key"):
        with pytest.raises(ConfigError, match="tokens.key_file"):
            config_from_dict({"tokens": {"key_file": str(path)}})
