"""TLS towards one upstream: the SSL context its requests (token requests included) use.

Rules: an upstream with no TLS keys uses the system's trust store (``SSL_CERT_FILE`` too);
``ca_file`` is trusted besides it (an internal registry may still redirect to a public CDN);
``client_cert`` + ``client_key`` are presented for mutual TLS; ``tls_verify: false`` checks
neither the certificate nor the host name (``warn_unverified`` says so at start). TLS 1.2 and up.
"""

from __future__ import annotations

import logging
import ssl

from proxy.config import UpstreamConfig

log = logging.getLogger("wharf.upstream")


def client_context(config: UpstreamConfig) -> ssl.SSLContext | bool:
    """The ``ssl=`` argument for this upstream's requests: True (aiohttp's default) or a context.

    The files were loaded once already when the config was validated.
    """
    if config.ca_file is None and config.client_cert is None and config.tls_verify:
        return True
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.ca_file is not None:
        context.load_verify_locations(cafile=str(config.ca_file))
    if config.client_cert is not None and config.client_key is not None:
        context.load_cert_chain(str(config.client_cert), str(config.client_key))
    if not config.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def warn_unverified(config: UpstreamConfig) -> None:
    """Log, once at start, that an upstream's certificate goes unchecked."""
    if not config.tls_verify:
        log.warning("upstream %s: tls_verify is false: its TLS certificate is not checked, so anyone "
                    "on the network path can impersonate it", config.name)


def describe_tls_error(exc: BaseException) -> str:
    """What went wrong in a TLS handshake, in words an operator can act on."""
    certificate_error = getattr(exc, "certificate_error", None)
    if certificate_error is not None:
        detail = getattr(certificate_error, "verify_message", None) or str(certificate_error)
        return (f"TLS certificate problem: {detail} (a private CA needs the upstream's ca_file; "
                f"is url's host the one the certificate names?)")
    original = getattr(exc, "os_error", None) or exc
    reason = getattr(original, "reason", None) or getattr(original, "strerror", None) or str(original)
    hint = ""
    if "CERTIFICATE" in str(reason).upper():
        hint = " (does it require a client certificate? set client_cert and client_key)"
    return f"TLS handshake failed: {reason}{hint}"
