"""Command line: ``wharf serve [--config FILE]``, ``wharf gc [--config FILE] [--dry-run]``."""

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
    from proxy.server import serve

    serve(config)
    return 0


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
    parser = argparse.ArgumentParser(prog="wharf", description="OCI pull-through cache and registry")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the registry / cache server")
    serve.add_argument("--config", help="YAML config file (default: the embedded config/wharf.yaml)")
    gc = sub.add_parser("gc", help="remove pushed blobs no manifest references, and expired uploads")
    gc.add_argument("--config", help="YAML config file (default: the embedded config/wharf.yaml)")
    gc.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    gc.add_argument("--grace", type=float, default=None,
                    help="seconds: content linked more recently is kept (default: gc.grace_seconds)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "gc":
        return _gc(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
