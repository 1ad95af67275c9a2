"""Command line: ``wharf serve [--config FILE]``."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from aiohttp import web

from proxy.config import ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log.level.upper(), format="%(message)s" if config.log.access_log else None)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    from proxy.app import create_app
    from proxy.http.accesslog import JsonAccessLogger

    config.storage.root.mkdir(parents=True, exist_ok=True)
    app = create_app(config)
    access_log = logging.getLogger("wharf.access") if config.log.access_log else None
    print(f"wharf: serving on {config.listen}, store at {os.path.abspath(config.storage.root)}", file=sys.stderr)
    web.run_app(app, host=config.host, port=config.port, access_log=access_log,
                access_log_class=JsonAccessLogger, print=None, reuse_port=config.workers > 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wharf", description="OCI pull-through cache and registry")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the registry / cache server")
    serve.add_argument("--config", help="YAML config file (default: the embedded config/wharf.yaml)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
