"""Upstream token auth: which realms get a credential, and following an upstream that stops
using tokens."""

from __future__ import annotations

import pytest

from support.fake_upstream import Fault
from support.images import basic_auth_header, make_image

from proxy.upstream.auth import realm_trusted

REPO = "team/app"
USERS = {"alice": "alice-pw"}
ALICE = basic_auth_header(("alice", "alice-pw"))


async def _two_fakes(fake_upstream):
    """An upstream with Bearer auth, and a token service on another port that would accept its users."""
    fake, elsewhere = await fake_upstream(), await fake_upstream()
    elsewhere.bearer = fake.require_bearer(users=USERS)
    fake.add_image(REPO, make_image("realm", (10,)), tag="1.0")
    fake.realm = f"{elsewhere.url}/token"
    return fake, elsewhere


@pytest.mark.parametrize("realm_hosts", [(), ("127.0.0.1",)], ids=["no-realm-hosts", "host-without-port"])
async def test_realm_on_the_upstreams_host_but_another_port_gets_no_credential(fake_upstream, make_wharf,
                                                                              realm_hosts):
    fake, elsewhere = await _two_fakes(fake_upstream)
    wharf = await make_wharf(fake.url, upstream_options={"realm_hosts": list(realm_hosts)})
    resp = await wharf.client.get(f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/manifests/1.0", headers=ALICE)
    assert resp.status == 503
    assert "untrusted token realm" in (await resp.json())["errors"][0]["message"]
    assert elsewhere.count(path="/token") == 0, "the client's Basic credential went to another port"


async def test_realm_named_with_its_port_in_realm_hosts_is_used(fake_upstream, make_wharf):
    fake, elsewhere = await _two_fakes(fake_upstream)
    wharf = await make_wharf(fake.url, upstream_options={"realm_hosts": [elsewhere.url.split("://", 1)[1]]})
    resp = await wharf.client.get(f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/manifests/1.0", headers=ALICE)
    assert resp.status == 200
    assert elsewhere.calls(path="/token")[0].headers["Authorization"] == ALICE["Authorization"]


@pytest.mark.parametrize("realm, upstream, realm_hosts, trusted", [
    ("https://reg.example/token", "https://reg.example", (), True),
    ("https://reg.example:443/token", "https://reg.example", (), True),
    ("https://REG.example/token", "https://reg.example", (), True),
    ("http://reg.example/token", "https://reg.example", (), False),
    ("https://reg.example:8443/token", "https://reg.example", (), False),
    ("http://127.0.0.1:7149/token", "http://127.0.0.1:7102", (), False),
    ("http://127.0.0.1:7149/token", "http://127.0.0.1:7102", ("127.0.0.1",), False),
    ("http://127.0.0.1:7149/token", "http://127.0.0.1:7102", ("127.0.0.1:7149",), True),
    ("https://auth.docker.io/token", "https://registry-1.docker.io", ("auth.docker.io",), True),
    ("https://auth.docker.io:444/token", "https://registry-1.docker.io", ("auth.docker.io",), False),
    ("http://auth.docker.io/token", "https://registry-1.docker.io", ("auth.docker.io",), False),
    ("http://auth.docker.io:80/token", "https://registry-1.docker.io", ("auth.docker.io:80",), False),
    ("https://auth.internal/token", "http://reg.internal", ("auth.internal",), True),
    ("https://[::1]:8443/token", "https://reg.example", ("[::1]:8443",), True),
    ("ftp://reg.example/token", "https://reg.example", (), False),
    ("/token", "https://reg.example", (), False),
])
def test_realm_trust_compares_scheme_host_and_port(realm, upstream, realm_hosts, trusted):
    assert realm_trusted(realm, upstream, realm_hosts) is trusted


async def test_upstream_that_stops_using_tokens_is_followed(fake_upstream, make_wharf):
    fake = await fake_upstream()
    fake.require_bearer()
    images = {repo: make_image(repo, (10,)) for repo in ("team/a", "team/b", "team/c")}
    for repo, image in images.items():
        fake.add_image(repo, image, tag="1.0")
    wharf = await make_wharf(fake.url)
    prefix = wharf.upstream_name(fake.url)

    async def pull(repo: str) -> None:
        resp = await wharf.client.get(f"/v2/{prefix}/{repo}/manifests/1.0")
        assert resp.status == 200, await resp.text()
        assert await resp.read() == images[repo].manifest

    await pull("team/a")  # Wharf learned the Bearer challenge
    fake.bearer = None    # upstream now serves everyone without tokens; its token service is gone
    fake.fault("/token", Fault(status=404))
    await pull("team/b")
    fake.clear_faults()
    fake.require_bearer()  # and back to tokens: the next 401 is learned again
    await pull("team/c")
    assert fake.calls(path="/v2/team/c/manifests/1.0")[-1].headers["Authorization"].startswith("Bearer ")


@pytest.mark.parametrize("entry", ["https://auth.docker.io", "auth.docker.io/token", "auth:port", ""])
def test_realm_hosts_entries_are_hosts_or_host_ports(entry):
    from proxy.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="realm_hosts"):
        config_from_dict({"upstreams": [{"name": "hub", "url": "https://registry-1.docker.io",
                                         "realm_hosts": [entry]}]})
