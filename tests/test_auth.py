"""Upstream auth and isolation: token passthrough, Wharf's /token, configured credentials, and
private content never widened to clients upstream would refuse."""

from __future__ import annotations

import base64

from support.fake_upstream import FakeRegistry
from support.images import MANIFEST_ACCEPT, make_image, push_image
from support.servers import free_port

PRIVATE = "org/secret"
PUBLIC = "org/open"
USERS = {"alice": "alice-pw", "bob": "bob-pw"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _setup(fake_upstream, make_wharf, **upstream_options):
    fake: FakeRegistry = await fake_upstream()
    fake.require_bearer(users=USERS, private={PRIVATE})
    secret, public = make_image("secret", (1000,)), make_image("public", (1000,))
    fake.add_image(PRIVATE, secret, tag="1.0")
    fake.add_image(PUBLIC, public, tag="1.0")
    wharf = await make_wharf(fake.url, upstream_options=upstream_options, auth=None)
    prefix = wharf.upstream_name(fake.url)
    return fake, wharf, prefix, secret, public


async def test_public_content_needs_no_credentials(fake_upstream, make_wharf):
    fake, wharf, prefix, _, public = await _setup(fake_upstream, make_wharf)
    resp = await wharf.client.get(f"/v2/{prefix}/{PUBLIC}/manifests/1.0")
    assert resp.status == 200 and await resp.read() == public.manifest
    resp = await wharf.client.get(f"/v2/{prefix}/{PUBLIC}/blobs/{public.layers[0].digest}")
    assert resp.status == 200 and await resp.read() == public.layers[0].data


async def test_anonymous_client_gets_a_challenge_for_private_content(fake_upstream, make_wharf):
    fake, wharf, prefix, secret, _ = await _setup(fake_upstream, make_wharf)
    resp = await wharf.client.get(f"/v2/{prefix}/{PRIVATE}/manifests/1.0")
    assert resp.status == 401
    assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{wharf.url}/token"')
    assert f'scope="repository:{prefix}/{PRIVATE}:pull"' in challenge


async def test_docker_login_flow_token_then_pull(fake_upstream, make_wharf):
    """What docker does after `docker login wharf`: follow the challenge to /token with Basic."""
    fake, wharf, prefix, secret, _ = await _setup(fake_upstream, make_wharf)
    scope = f"repository:{prefix}/{PRIVATE}:pull"
    resp = await wharf.client.get("/token", params={"service": "wharf", "scope": scope},
                                  headers=basic("alice", "wrong"))
    assert resp.status == 401
    resp = await wharf.client.get("/token", params={"service": "wharf", "scope": scope},
                                  headers=basic("alice", "alice-pw"))
    assert resp.status == 200
    token = (await resp.json())["token"]
    assert "alice-pw" not in token
    resp = await wharf.client.get(f"/v2/{prefix}/{PRIVATE}/manifests/1.0",
                                  headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == secret.manifest


async def test_private_content_is_not_served_from_cache_to_other_clients(fake_upstream, make_wharf):
    fake, wharf, prefix, secret, _ = await _setup(fake_upstream, make_wharf)
    manifest = f"/v2/{prefix}/{PRIVATE}/manifests/1.0"
    layer = f"/v2/{prefix}/{PRIVATE}/blobs/{secret.layers[0].digest}"
    by_digest = f"/v2/{prefix}/{PRIVATE}/manifests/{secret.digest}"
    for path in (manifest, layer):
        resp = await wharf.client.get(path, headers=basic("alice", "alice-pw"))
        assert resp.status == 200
    # anonymous and wrong-password clients get nothing from the cache, by tag or by digest
    for headers in ({}, basic("mallory", "guess")):
        for path in (manifest, layer, by_digest):
            resp = await wharf.client.get(path, headers=headers)
            assert resp.status == 401, (path, headers)
    # a content-addressed request in a public repo does not leak the private blob either
    resp = await wharf.client.get(f"/v2/{prefix}/{PUBLIC}/blobs/{secret.layers[0].digest}")
    assert resp.status in (401, 404)


async def test_second_authorized_client_is_confirmed_with_head_not_refetched(fake_upstream, make_wharf):
    fake, wharf, prefix, secret, _ = await _setup(fake_upstream, make_wharf)
    layer_path = fake.blob_path(PRIVATE, secret.layers[0].digest)
    await wharf.client.get(f"/v2/{prefix}/{PRIVATE}/manifests/{secret.digest}", headers=basic("alice", "alice-pw"))
    await wharf.client.get(f"/v2/{prefix}/{PRIVATE}/blobs/{secret.layers[0].digest}", headers=basic("alice", "alice-pw"))
    assert fake.count("GET", layer_path) == 1
    resp = await wharf.client.get(f"/v2/{prefix}/{PRIVATE}/blobs/{secret.layers[0].digest}",
                                  headers=basic("bob", "bob-pw"))
    assert resp.status == 200 and await resp.read() == secret.layers[0].data
    assert fake.count("GET", layer_path) == 1, "the blob was downloaded again"
    heads = fake.count("HEAD", fake.manifest_path(PRIVATE, secret.digest)) + fake.count("HEAD", layer_path)
    assert heads == 1
    # bob's answer is remembered briefly: the next pulls ask upstream nothing
    before = fake.count()
    for _ in range(3):
        resp = await wharf.client.get(f"/v2/{prefix}/{PRIVATE}/blobs/{secret.layers[0].digest}",
                                      headers=basic("bob", "bob-pw"))
        assert resp.status == 200
    assert fake.count() == before


async def test_configured_credentials_serve_nodes_that_send_none(fake_upstream, make_wharf):
    fake, wharf, prefix, secret, _ = await _setup(fake_upstream, make_wharf, username="alice",
                                                  password="alice-pw")
    resp = await wharf.client.get(f"/v2/{prefix}/{PRIVATE}/manifests/1.0")
    assert resp.status == 200 and await resp.read() == secret.manifest


async def test_token_realm_on_a_foreign_host_is_refused(fake_upstream, make_wharf):
    fake, wharf, prefix, _, public = await _setup(fake_upstream, make_wharf)
    fake.realm = fake.url.replace("127.0.0.1", "localhost") + "/token"
    resp = await wharf.client.get(f"/v2/{prefix}/{PUBLIC}/manifests/1.0")
    assert resp.status == 503
    assert fake.count(path="/token") == 0, "Wharf sent a token request to a realm it must not trust"


async def test_basic_auth_upstream_docker_registry(auth_registry_upstream, make_wharf, repo_name):
    """Debian's docker-registry with htpasswd: Basic credentials pass through to it."""
    image = make_image("htpasswd", (2000,))
    await push_image(auth_registry_upstream.url, repo_name, image, tag="v1", auth=auth_registry_upstream.auth)
    wharf = await make_wharf(auth_registry_upstream.url)
    path = f"/v2/{wharf.upstream_name(auth_registry_upstream.url)}/{repo_name}/manifests/v1"
    resp = await wharf.client.get(path, headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 401
    resp = await wharf.client.get(path, headers={**auth_registry_upstream.headers, "Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == image.manifest
    # cached, but still not for anonymous clients
    resp = await wharf.client.get(path, headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 401


async def test_token_endpoint_checks_basic_credentials_at_a_basic_upstream(auth_registry_upstream, make_wharf):
    wharf = await make_wharf(auth_registry_upstream.url)
    scope = f"repository:{wharf.upstream_name(auth_registry_upstream.url)}/any/repo:pull"
    resp = await wharf.client.get("/token", params={"scope": scope}, headers=basic(auth_registry_upstream.username, "nope"))
    assert resp.status == 401
    resp = await wharf.client.get("/token", params={"scope": scope}, headers=auth_registry_upstream.headers)
    assert resp.status == 200 and (await resp.json())["token"]


# --- docker login <wharf>: the ping challenge for docker, the login check at /token --------------

DOCKERD_AGENT = ("docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/amd64 "
                 "UpstreamClient(Docker-Client/28.2.2 \\(linux\\))")


async def test_anonymous_ping_is_challenged_like_docker_hub(fake_upstream, make_wharf):
    """Clients learn how to authenticate only from a 401 on ``GET /v2/`` (docker and skopeo alike):
    every anonymous ping gets the challenge to Wharf's /token."""
    fake, wharf, prefix, _, public = await _setup(fake_upstream, make_wharf)
    for agent in (DOCKERD_AGENT, "skopeo/1.9.3", "Python/3.11 aiohttp/3.9", ""):
        resp = await wharf.client.get("/v2/", headers={"User-Agent": agent})
        assert resp.status == 401, agent
        assert resp.headers["WWW-Authenticate"] == f'Bearer realm="{wharf.url}/token",service="wharf"'
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    # what docker does next without a login: an anonymous token, which pings and pulls public content
    resp = await wharf.client.get("/token", params={"service": "wharf", "scope": f"repository:{prefix}/{PUBLIC}:pull"},
                                  headers={"User-Agent": DOCKERD_AGENT})
    assert resp.status == 200
    bearer = {"Authorization": f"Bearer {(await resp.json())['token']}", "User-Agent": DOCKERD_AGENT}
    resp = await wharf.client.get("/v2/", headers=bearer)
    assert resp.status == 200
    resp = await wharf.client.get(f"/v2/{prefix}/{PUBLIC}/manifests/1.0", headers={**bearer, "Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == public.manifest
    resp = await wharf.client.get(f"/v2/{prefix}/{PRIVATE}/manifests/1.0", headers={**bearer, "Accept": MANIFEST_ACCEPT})
    assert resp.status == 401


async def _login(wharf, headers: dict[str, str]):
    """``docker login``'s token request: Basic credentials, no scope."""
    return await wharf.client.get("/token", params={"account": "x", "client_id": "docker", "offline_token": "true",
                                                    "service": "wharf"}, headers=headers)


async def test_login_without_scope_checks_credentials_at_a_bearer_upstream(fake_upstream, make_wharf):
    fake, wharf, *_ = await _setup(fake_upstream, make_wharf)
    resp = await _login(wharf, basic("alice", "wrong"))
    assert resp.status == 401
    assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    assert resp.headers["WWW-Authenticate"].startswith(f'Bearer realm="{wharf.url}/token"')
    refused = fake.calls("GET", "/token")[-1]
    assert "scope" not in refused.query, "a login asks upstream for no particular repository"
    resp = await _login(wharf, basic("alice", "alice-pw"))
    assert resp.status == 200 and (await resp.json())["token"].startswith("wharf.")
    # anonymous clients still get a token without any upstream check
    before = fake.count()
    resp = await _login(wharf, {})
    assert resp.status == 200 and fake.count() == before


async def test_login_without_scope_checks_credentials_at_a_basic_upstream(auth_registry_upstream, make_wharf):
    wharf = await make_wharf(auth_registry_upstream.url, upstream_options={"aliases": ["private.test"]})
    resp = await _login(wharf, basic(auth_registry_upstream.username, "nope"))
    assert resp.status == 401
    resp = await _login(wharf, auth_registry_upstream.headers)
    assert resp.status == 200


async def test_login_is_good_when_any_upstream_accepts_it(fake_upstream, auth_registry_upstream,
                                                          registry_upstream, make_wharf):
    """Several upstreams, each with its own accounts, one open: a login is accepted when one that
    asks for authentication accepts it, refused when those that ask all refuse it."""
    fake, *_ = await _setup(fake_upstream, make_wharf)
    wharf = await make_wharf(fake.url, auth_registry_upstream.url, registry_upstream)
    assert (await _login(wharf, basic("alice", "alice-pw"))).status == 200        # the fake's account
    assert (await _login(wharf, auth_registry_upstream.headers)).status == 200    # the htpasswd account
    assert (await _login(wharf, basic("alice", "wrong"))).status == 401
    assert (await _login(wharf, basic(auth_registry_upstream.username, "alice-pw"))).status == 401


async def test_login_with_nothing_to_check_against_is_accepted(registry_upstream, make_wharf):
    """Open upstreams and unreachable ones can neither accept nor refuse: the login goes through
    (the credential is checked again at pull time, per repository)."""
    dead = f"http://127.0.0.1:{free_port()}"
    wharf = await make_wharf(registry_upstream, dead)
    assert (await _login(wharf, basic("anyone", "anything"))).status == 200
    wharf = await make_wharf()
    assert (await _login(wharf, basic("anyone", "anything"))).status == 200


async def test_login_is_refused_when_the_only_asking_upstream_refuses(auth_registry_upstream, make_wharf):
    dead = f"http://127.0.0.1:{free_port()}"
    wharf = await make_wharf(dead, auth_registry_upstream.url)
    assert (await _login(wharf, basic(auth_registry_upstream.username, "nope"))).status == 401
    assert (await _login(wharf, auth_registry_upstream.headers)).status == 200


async def test_public_url_sets_the_token_realm(fake_upstream, make_wharf):
    fake, wharf, prefix, _, _ = await _setup(fake_upstream, make_wharf)
    wharf = await make_wharf(fake.url, public_url="https://wharf.example/", auth=None)
    resp = await wharf.client.get("/v2/")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="https://wharf.example/token",service="wharf"'
