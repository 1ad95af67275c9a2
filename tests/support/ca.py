"""A throwaway certificate authority for tests, made with the ``openssl`` command.

``make_ca(dir)`` writes ``ca.crt``/``ca.key``; ``ca.issue(name)`` writes ``<name>.crt`` and
``<name>.key`` for a server known as ``localhost``, ``127.0.0.1`` and ``::1`` (ECDSA P-256, valid
two days). Clients trust ``ca.crt`` and nothing else; nothing here touches the system's trust store.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.servers import require_binary

SERVER_NAMES = "DNS:localhost,IP:127.0.0.1,IP:::1"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_binary("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class ServerCert:
    cert: Path
    key: Path

    def der(self) -> bytes:
        """The certificate (the first of the chain) in DER, as a TLS client sees it."""
        return ssl.PEM_cert_to_DER_cert(self.cert.read_text())


@dataclass(frozen=True)
class TestCA:
    __test__ = False  # not a test class, whatever its name says
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    def issue(self, name: str, names: str = SERVER_NAMES) -> ServerCert:
        """A new key and a server certificate for ``names``, signed by this CA."""
        d = self.directory
        (d / f"{name}.ext").write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n"
                                       "basicConstraints=critical,CA:FALSE\n"
                                       "keyUsage=critical,digitalSignature\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial",
                 str(abs(hash((name, d))) % 2**62), "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=d)
        return ServerCert(d / f"{name}.crt", d / f"{name}.key")

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.cert))


def make_ca(directory: Path) -> TestCA:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Wharf test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    return TestCA(directory)
