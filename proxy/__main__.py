"""Command line: ``wharf serve [--config FILE]``, ``wharf gc [--config FILE] [--dry-run]``,
``wharf healthcheck [--config FILE]``, ``wharf --version``.

Every command creates files for the owner only (umask 077): the store holds cached private
content and credentials' traces, and nobody else on the host needs to read it.
"""

from __future__ import annotations

import argparse
import os
import sys

from proxy.config import ConfigError, load_config


def _config(args: argparse.Namespace):
    """The validated config, or None after saying on stderr what is wrong with it."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 2
    from proxy.logs import setup_logging

    setup_logging(config.log)
    from proxy.server import StartError, serve

    try:
        serve(config)
    except StartError as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return 2
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    """GET /healthz on the configured listen address (https when TLS is on): 0 when it answers
    200, else 1 — what a container HEALTHCHECK expects.

    The local process is asked, not a name clients use: the certificate is not verified.
    """
    import ssl
    import urllib.request

    config = _config(args)
    if config is None:
        return 1
    # a wildcard listener is asked on IPv4 loopback ([::] takes IPv4 too; a container may lack ::1)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    netloc = f"[{host}]:{config.port}" if ":" in host else f"{host}:{config.port}"
    url = f"{'https' if config.tls.enabled else 'http'}://{netloc}/healthz"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as resp:
            status = resp.status
    except OSError as exc:  # refused, timed out, TLS failure, HTTP error status
        print(f"wharf: {url}: {getattr(exc, 'reason', None) or exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"wharf: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wharf")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _gc(args: argparse.Namespace) -> int:
    """Collect unreferenced pushed blobs and expired uploads; safe while ``wharf serve`` runs."""
    import asyncio
    import json

    from proxy.registry.gc import collect
    from proxy.storage.blobs import BlobStore
    from proxy.storage.meta import MetaStore
    from proxy.storage.uploads import UploadStore

    config = _config(args)
    if config is None:
        return 2
    root = config.storage.root
    if not (root / "blobs").is_dir():
        print(f"wharf: no store at {os.path.abspath(root)}", file=sys.stderr)
        return 2
    blobs = BlobStore(root)
    meta = MetaStore(root / "meta")
    uploads = UploadStore(root, config.limits.upload_idle_seconds, config.limits.max_layer_bytes)
    grace = config.gc.grace_seconds if args.grace is None else args.grace
    try:
        report = asyncio.run(collect(blobs, meta, uploads, grace, dry_run=args.dry_run))
    finally:
        meta.close()
    print(json.dumps(report.as_dict()))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # before anything creates a file: the store is the owner's alone
    parser = argparse.ArgumentParser(prog="wharf", description="OCI pull-through cache and registry")
    parser.add_argument("--version", action="version", version=f"wharf {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the registry / cache server")
    serve.add_argument("--config", help="YAML config file (default: the embedded config/wharf.yaml)")
    gc = sub.add_parser("gc", help="remove pushed blobs no manifest references, and expired uploads")
    gc.add_argument("--config", help="YAML config file (default: the embedded config/wharf.yaml)")
    gc.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    gc.add_argument("--grace", type=float, default=None,
                    help="seconds: content linked more recently is kept (default: gc.grace_seconds)")
    health = sub.add_parser("healthcheck", help="exit 0 when the server on the configured address is healthy")
    health.add_argument("--config", help="YAML config file (default: the embedded config/wharf.yaml)")
    health.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "healthcheck":
        return _healthcheck(args)
    if args.command == "gc":
        return _gc(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
