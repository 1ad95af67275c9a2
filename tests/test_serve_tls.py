"""HTTPS on Wharf's own listener: TLS 1.2 and up, stored and streamed blobs and replayed answers
through the encrypted connection, a renewed certificate served without a restart, and a pair
that does not load refused at start with one line naming ``tls.key`` or ``tls.cert``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import time
import warnings

import aiohttp
import pytest
from aiohttp import web

from proxy.app import create_app
from proxy.config import TlsConfig, config_from_dict
from proxy.http.replayserver import ReplayingAppRunner
from proxy.server import CertReloader, StartError
from support.ca import ServerCert, TestCA, make_ca
from support.images import MANIFEST_ACCEPT, make_image, push_image
from support.servers import free_port
from support.wharf_serve import assert_one_line_refusal, start_failure, start_wharf, wharf_argv, wharf_env


@pytest.fixture
def ca(tmp_path) -> TestCA:
    return make_ca(tmp_path / "ca")


def _installed(cert: ServerCert, directory) -> ServerCert:
    """Copy a pair to where the config points (``server.crt``/``server.key`` in ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    installed = ServerCert(directory / "server.crt", directory / "server.key")
    _replace(cert, installed)
    return installed


def _replace(source: ServerCert, target: ServerCert, cert: bool = True, key: bool = True) -> None:
    """Renew as certbot or cert-manager do: new files renamed over the old ones."""
    for wanted, src, dst in ((key, source.key, target.key), (cert, source.cert, target.cert)):
        if wanted:
            shutil.copyfile(src, dst.with_suffix(".new"))
            os.replace(dst.with_suffix(".new"), dst)


def _presented(port: int, ca: TestCA, host: str = "127.0.0.1") -> tuple[bytes, str]:
    """A new TLS connection: the certificate the server presents (DER) and the protocol used."""
    with socket.create_connection((host, port), timeout=10) as raw:
        with ca.client_context().wrap_socket(raw, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True), tls.version()


class InProcessWharf:
    """Wharf's app behind the replaying runner on an HTTPS site, as ``wharf serve`` runs it,
    on the test's loop; ``handled`` lists the paths the application (not a replay) answered."""

    def __init__(self, tmp_path, upstream_url: str, pair: ServerCert) -> None:
        self.config = config_from_dict({
            "listen": "127.0.0.1:0", "storage": {"root": str(tmp_path / "store")},
            "upstreams": [{"name": upstream_url.split("://", 1)[1], "url": upstream_url}],
            "default_upstream": None, "log": {"access_log": False},
            "tls": {"cert": str(pair.cert), "key": str(pair.key)}})
        self.reloader = CertReloader(self.config.tls)
        self.handled: list[str] = []

    async def start(self) -> None:
        app = create_app(self.config)

        async def record(request, response) -> None:
            self.handled.append(request.path)

        app.on_response_prepare.append(record)
        self.runner = ReplayingAppRunner(app)
        await self.runner.setup()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        await web.SockSite(self.runner, self.sock, ssl_context=self.reloader.context).start()
        self.port = self.sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def tls_wharf(tmp_path, ca, registry_upstream):
    wharf = InProcessWharf(tmp_path, registry_upstream, _installed(ca.issue("first"), tmp_path / "tls"))
    await wharf.start()
    yield wharf
    await wharf.close()


async def test_pulls_over_https_get_upstreams_bytes(tls_wharf, ca, registry_upstream, repo_name):
    """Manifests (replayed after a miss and a hit), a blob streamed while it fills, the same blob
    from the store (sendfile's size range) and a Range of it: all through the TLS connection."""
    image = make_image("tls-pull", (2000, 3_000_000))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    name = f"{registry_upstream.split('://', 1)[1]}/{repo_name}"
    manifest = f"/v2/{name}/manifests/v1"
    connector = aiohttp.TCPConnector(ssl=ca.client_context(), limit=1)  # one keep-alive connection
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(5):
            async with session.get(tls_wharf.url + manifest, headers={"Accept": MANIFEST_ACCEPT}) as resp:
                assert resp.status == 200 and await resp.read() == image.manifest
        assert tls_wharf.handled.count(manifest) <= 2, "later hits were not replayed"
        for layer in image.layers:
            for _ in range(2):  # filled from upstream, then from the store
                async with session.get(f"{tls_wharf.url}/v2/{name}/blobs/{layer.digest}") as resp:
                    assert resp.status == 200
                    body = await resp.read()
                assert "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
        big = image.layers[1]
        async with session.get(f"{tls_wharf.url}/v2/{name}/blobs/{big.digest}",
                               headers={"Range": "bytes=1000000-"}) as resp:
            assert resp.status == 206 and await resp.read() == big.data[1000000:]
        async with session.get(tls_wharf.url + manifest, headers={"Accept": MANIFEST_ACCEPT}) as resp:
            assert await resp.read() == image.manifest  # the connection is still in step


async def test_tls_1_2_and_up_only(tls_wharf, ca):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ca.client_context()
        context.minimum_version = context.maximum_version = version
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_wharf.port, ssl=context,
                                                       server_hostname="127.0.0.1")
        assert writer.get_extra_info("ssl_object").version() == version.name.replace("_", ".")
        writer.close()
    old = ca.client_context()
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1 at all
    with warnings.catch_warnings():  # deprecated, which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version, old.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("127.0.0.1", tls_wharf.port, ssl=old, server_hostname="127.0.0.1")
    assert tls_wharf.reloader.context.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_a_renewed_pair_is_used_for_new_connections_and_a_broken_one_is_not(tls_wharf, ca, tmp_path):
    installed = ServerCert(tmp_path / "tls" / "server.crt", tmp_path / "tls" / "server.key")
    first = installed.der()
    assert (await asyncio.to_thread(_presented, tls_wharf.port, ca))[0] == first
    renewed = ca.issue("renewed")
    _replace(renewed, installed, key=False)  # the certificate arrives before its key
    assert tls_wharf.reloader.check() is False
    assert (await asyncio.to_thread(_presented, tls_wharf.port, ca))[0] == first, "a mismatched pair was used"
    _replace(renewed, installed, cert=False)
    assert tls_wharf.reloader.check() is True
    assert (await asyncio.to_thread(_presented, tls_wharf.port, ca))[0] == renewed.der()
    assert tls_wharf.reloader.check() is False  # nothing changed since


# --- the real command -----------------------------------------------------------------------

def _serve_config(tmp_path, installed: ServerCert, upstream_url: str | None = None, **extra) -> dict:
    upstreams = [{"name": upstream_url.split("://", 1)[1], "url": upstream_url}] if upstream_url else []
    return {"listen": f"127.0.0.1:{free_port()}", "workers": 2, "storage": {"root": str(tmp_path / "data")},
            "upstreams": upstreams, "default_upstream": None,
            "tls": {"cert": str(installed.cert), "key": str(installed.key), **extra}}


async def test_wharf_serve_https_with_two_workers(ca, registry_upstream, repo_name, tmp_path):
    image = make_image("tls-serve", (2000, 2_000_000))
    await push_image(registry_upstream, repo_name, image, tag="v1")
    installed = _installed(ca.issue("serve"), tmp_path / "tls")
    wharf = start_wharf(tmp_path / "work", _serve_config(tmp_path, installed, registry_upstream),
                        context=ca.client_context())
    name = f"{registry_upstream.split('://', 1)[1]}/{repo_name}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca.client_context())) as session:
            for _ in range(3):
                async with session.get(f"{wharf.url}/v2/{name}/manifests/v1",
                                       headers={"Accept": MANIFEST_ACCEPT}) as resp:
                    assert resp.status == 200 and await resp.read() == image.manifest
                for layer in image.layers:
                    async with session.get(f"{wharf.url}/v2/{name}/blobs/{layer.digest}") as resp:
                        assert resp.status == 200 and await resp.read() == layer.data
        health = await asyncio.to_thread(
            subprocess.run, wharf_argv("healthcheck", "--config", str(wharf.config_path)),
            env=wharf_env(), capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stderr
    finally:
        wharf.stop()
    assert wharf.process.returncode == 0, wharf.output()
    assert "(https)" in wharf.output()


def test_wharf_serve_uses_a_renewed_certificate_without_restart(ca, tmp_path):
    installed = _installed(ca.issue("before"), tmp_path / "tls")
    wharf = start_wharf(tmp_path / "work", _serve_config(tmp_path, installed, reload_interval=0.2),
                        context=ca.client_context())
    port = int(wharf.url.rpartition(":")[2])
    try:
        assert _presented(port, ca)[0] == installed.der()
        renewed = ca.issue("after")
        _replace(renewed, installed)
        deadline = time.monotonic() + 20
        while _presented(port, ca)[0] != renewed.der():
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(0.1)
        time.sleep(1)  # both workers have looked at the files by now (every 0.2 s)
        assert all(_presented(port, ca)[0] == renewed.der() for _ in range(8)), "a worker kept the old one"
        assert wharf.process.poll() is None
    finally:
        wharf.stop()


# --- refused at start -----------------------------------------------------------------------

def _refusal(tmp_path, installed: ServerCert) -> tuple[int | None, str]:
    return start_failure(tmp_path / "work", _serve_config(tmp_path, installed))


def test_a_missing_key_file_is_one_line_naming_tls_key(ca, tmp_path):
    installed = _installed(ca.issue("nokey"), tmp_path / "tls")
    installed.key.unlink()
    assert_one_line_refusal(*_refusal(tmp_path, installed), "wharf: tls.key:", str(installed.key))


def test_a_key_that_is_not_a_key_is_one_line_naming_tls_key(ca, tmp_path):
    installed = _installed(ca.issue("badkey"), tmp_path / "tls")
    installed.key.write_text("not a key\n")
    assert_one_line_refusal(*_refusal(tmp_path, installed), "wharf: tls.key:")


def test_the_key_of_another_certificate_is_one_line_naming_tls_key(ca, tmp_path):
    installed = _installed(ca.issue("mine"), tmp_path / "tls")
    _replace(ca.issue("someone-else"), installed, cert=False)
    assert_one_line_refusal(*_refusal(tmp_path, installed), "wharf: tls.key:")


def test_a_missing_certificate_is_one_line_naming_tls_cert(ca, tmp_path):
    installed = _installed(ca.issue("nocert"), tmp_path / "tls")
    installed.cert.unlink()
    assert_one_line_refusal(*_refusal(tmp_path, installed), "wharf: tls.cert:")


def test_a_broken_certificate_is_one_line_naming_tls_cert(ca, tmp_path):
    installed = _installed(ca.issue("brokencert"), tmp_path / "tls")
    pem = installed.cert.read_text().splitlines()
    installed.cert.write_text("\n".join(pem[:3] + ["AAAA" + line[4:] for line in pem[3:-1]] + pem[-1:]) + "\n")
    assert_one_line_refusal(*_refusal(tmp_path, installed), "wharf: tls.cert:")


def test_an_encrypted_key_is_refused_without_asking_for_a_password(ca, tmp_path):
    installed = _installed(ca.issue("encrypted"), tmp_path / "tls")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(installed.key), "-aes256", "-passout", "pass:secret",
                    "-out", str(encrypted)], check=True, capture_output=True)
    os.replace(encrypted, installed.key)
    with pytest.raises(StartError, match="tls.key"):
        CertReloader(TlsConfig(cert=installed.cert, key=installed.key))
