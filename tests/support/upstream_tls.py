"""A private CA made with the openssl CLI, and Debian's docker-registry serving TLS with it.

``make_pki(directory)`` writes a CA, a server certificate for 127.0.0.1 / localhost and a client
certificate (for mutual TLS), all signed by that CA and trusted by nothing else.
``start_tls_registry(workdir, pki, require_client_cert=...)`` runs docker-registry on https with
the server certificate; with ``require_client_cert`` it refuses clients without a certificate
from the CA (distribution's ``http.tls.clientcas``).
"""

from __future__ import annotations

import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from .servers import RegistryServer, ServerError, _start, registry_config, require_binary


@dataclass(frozen=True)
class Pki:
    """Paths of one test CA and the certificates it signed (keys unencrypted)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self) -> ssl.SSLContext:
        """For an aiohttp test server presenting the server certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context

    def client_context(self, with_certificate: bool = False) -> ssl.SSLContext:
        """For a test's own client: trusts the CA, presents the client certificate if asked."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if with_certificate:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run([require_binary("openssl"), *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServerError(f"openssl {' '.join(args[:2])} failed: {result.stderr[-2000:]}")


def _signed(directory: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    """A P-256 key and a certificate for it signed by the CA in ``directory``."""
    key, csr, cert, ext = (directory / f"{name}.key", directory / f"{name}.csr",
                           directory / f"{name}.pem", directory / f"{name}.ext")
    ext.write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key.name, "-out", csr.name, "-subj", subject, cwd=directory)
    _openssl("x509", "-req", "-in", csr.name, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", ext.name, "-out", cert.name, cwd=directory)
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Write a fresh CA, a server certificate (127.0.0.1, localhost) and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Wharf test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    server_cert, server_key = _signed(
        directory, "server", "/CN=127.0.0.1",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    client_cert, client_key = _signed(
        directory, "client", "/CN=wharf-client",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
    return Pki(directory / "ca.pem", directory / "ca.key", server_cert, server_key, client_cert, client_key)


def _tls_registry_answers(port: int, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/v2/", timeout=1, context=context) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False


def start_tls_registry(workdir: Path, pki: Pki, require_client_cert: bool = False) -> RegistryServer:
    """docker-registry on ``https://127.0.0.1:PORT`` with the PKI's server certificate."""
    binary = require_binary("docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)

    def launch(port: int) -> tuple[list[str], str]:
        config = registry_config(port, workdir / "data")
        config["http"]["tls"] = {"certificate": str(pki.server_cert), "key": str(pki.server_key)}
        if require_client_cert:
            config["http"]["tls"]["clientcas"] = [str(pki.ca_cert)]
        config_path = workdir / "config.yml"
        config_path.write_text(yaml.safe_dump(config))
        return [binary, "serve", str(config_path)], f"https://127.0.0.1:{port}"

    probe_context = pki.client_context(with_certificate=require_client_cert)
    server = _start("docker-registry", workdir, launch, lambda port: _tls_registry_answers(port, probe_context),
                    factory=RegistryServer)
    assert isinstance(server, RegistryServer)
    return server
