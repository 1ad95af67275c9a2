"""Upstream TLS per upstream: a private CA (``ca_file``), mutual TLS (``client_cert``/``client_key``),
``tls_verify: false``; Debian's docker-registry serves TLS as the upstream."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from support.fake_upstream import FakeRegistry
from support.images import MANIFEST_ACCEPT, basic_auth_header, make_image, push_image
from support.servers import RegistryServer
from support.upstream_tls import Pki, make_pki, start_tls_registry

REPO = "team/tls"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _pushed(server: RegistryServer, pki: Pki, with_certificate: bool = False):
    image = make_image("tls", (2048,))
    connector = aiohttp.TCPConnector(ssl=pki.client_context(with_certificate))
    async with aiohttp.ClientSession(connector=connector) as session:
        await push_image(server.url, REPO, image, tag="1.0", session=session)
    return image


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki):
    server = start_tls_registry(tmp_path_factory.mktemp("tls-registry"), pki)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mtls_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki):
    server = start_tls_registry(tmp_path_factory.mktemp("mtls-registry"), pki, require_client_cert=True)
    try:
        yield server
    finally:
        server.stop()


async def _pull(wharf, upstream_url: str, image) -> None:
    name = f"{wharf.upstream_name(upstream_url)}/{REPO}"
    resp = await wharf.client.get(f"/v2/{name}/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200, await resp.text()
    assert await resp.read() == image.manifest
    layer = image.layers[0]
    resp = await wharf.client.get(f"/v2/{name}/blobs/{layer.digest}")
    assert resp.status == 200 and await resp.read() == layer.data


async def _refused(wharf, upstream_url: str) -> str:
    resp = await wharf.client.get(f"/v2/{wharf.upstream_name(upstream_url)}/{REPO}/manifests/1.0")
    assert resp.status == 503
    error = (await resp.json())["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    return error["message"]


async def test_private_ca_upstream_is_pulled_through_with_its_ca_file(tls_registry, pki, make_wharf):
    image = await _pushed(tls_registry, pki)
    wharf = await make_wharf(tls_registry.url, upstream_options={"ca_file": str(pki.ca_cert)})
    await _pull(wharf, tls_registry.url, image)


async def test_private_ca_upstream_without_ca_file_is_a_clear_certificate_error(tls_registry, pki,
                                                                                  make_wharf, caplog):
    await _pushed(tls_registry, pki)
    wharf = await make_wharf(tls_registry.url)
    with caplog.at_level(logging.DEBUG):
        message = await _refused(wharf, tls_registry.url)
    assert "TLS certificate problem" in message and "ca_file" in message
    assert "Traceback" not in caplog.text


async def test_tls_verify_false_pulls_and_warns_at_start(tls_registry, pki, make_wharf, caplog):
    image = await _pushed(tls_registry, pki)
    with caplog.at_level(logging.WARNING, logger="wharf"):
        wharf = await make_wharf(tls_registry.url, upstream_options={"tls_verify": False})
    name = wharf.upstream_name(tls_registry.url)
    assert any("tls_verify is false" in r.getMessage() and name in r.getMessage() for r in caplog.records)
    await _pull(wharf, tls_registry.url, image)


async def test_mutual_tls_upstream_needs_the_client_certificate(mtls_registry, pki, make_wharf):
    image = await _pushed(mtls_registry, pki, with_certificate=True)
    wharf = await make_wharf(mtls_registry.url, upstream_options={
        "ca_file": str(pki.ca_cert), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)})
    await _pull(wharf, mtls_registry.url, image)
    without = await make_wharf(mtls_registry.url, upstream_options={"ca_file": str(pki.ca_cert)})
    message = await _refused(without, mtls_registry.url)
    assert "client_cert" in message


async def test_https_upstream_never_sends_credentials_to_an_http_realm(aiohttp_server, fake_upstream,
                                                                      pki, make_wharf):
    token_service = await fake_upstream()  # plain http, listed in realm_hosts all the same
    fake = FakeRegistry()
    server = await aiohttp_server(fake.app, ssl=pki.server_context())
    fake.url = str(server.make_url("")).rstrip("/")
    assert fake.url.startswith("https://")
    bearer = fake.require_bearer(users={"alice": "pw"})
    token_service.bearer = bearer
    fake.add_image(REPO, make_image("realm", (10,)), tag="1.0")
    fake.realm = f"{token_service.url}/token"
    realm_host = token_service.url.split("://", 1)[1]
    wharf = await make_wharf(fake.url, upstream_options={"ca_file": str(pki.ca_cert),
                                                         "realm_hosts": [realm_host]})
    resp = await wharf.client.get(f"/v2/{wharf.upstream_name(fake.url)}/{REPO}/manifests/1.0",
                                  headers=basic_auth_header(("alice", "pw")))
    assert resp.status == 503
    assert token_service.count(path="/token") == 0, "an http realm received the client's credential"


@pytest.mark.parametrize("options, problem", [
    ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),
    ({"client_cert": "/nonexistent/c.pem"}, "client_cert and client_key go together"),
    ({"tls_verify": False, "url": "http://127.0.0.1:1"}, "https:// upstreams only"),
])
def test_tls_settings_are_checked_when_the_config_loads(options, problem):
    from proxy.config import ConfigError, config_from_dict

    upstream = {"name": "internal", "url": "https://registry.internal", **options}
    with pytest.raises(ConfigError, match=problem):
        config_from_dict({"upstreams": [upstream]})
