"""``wharf client-config containerd|podman|docker [--host HOST] [--config FILE]`` and
``wharf config check FILE``.

client-config prints the files the home page shows (``proxy.clientconfig``), each after a comment
naming where it goes and what to know about it. config check loads a config as ``wharf serve``
would (environment overrides and secrets resolved), and prints the effective config as YAML with
every secret masked: upstream passwords, and the password in any URL (database, Redis, upstream,
public_url), in its user-info or its query. Exit status: 0 done, 2 a bad config or argument (the
reason on one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml

from proxy.clientconfig import CLIENTS, HostInvalid, client_files
from proxy.config import Config, ConfigError, load_config

MASK = "********"
_QUERY_SECRETS = frozenset({"password", "passwd", "pass", "secret", "token", "sslpassword"})


def add_config_commands(sub, add_config) -> None:
    """The ``client-config`` and ``config`` parsers; ``add_config`` adds ``--config FILE``."""
    clients = sub.add_parser("client-config", help="print the files that point a client at this Wharf")
    clients.add_argument("client", choices=CLIENTS)
    clients.add_argument("--host", metavar="HOST",
                         help="host[:port] clients use for Wharf (default: public_url's, else the listen address)")
    add_config(clients)
    clients.set_defaults(run=_client_config)
    config = sub.add_parser("config", help="the config file").add_subparsers(dest="action", required=True)
    check = config.add_parser("check", help="validate a config file and print the effective config, secrets masked")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(run=_config_check)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _client_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"wharf: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        files = client_files(config, args.client, args.host)
    except HostInvalid as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return 2
    print("\n".join(render_file(file) for file in files), end="")
    return 0


def render_file(file) -> str:
    """A client file as the CLI prints it: ``# --- PATH`` and its note as comments, then its text."""
    return f"# --- {file.path}\n" + "".join(f"# {line}\n" for line in textwrap.wrap(file.note, 98)) + file.text + "\n"


def _config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"wharf: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"# {args.file}: valid; the effective config (environment overrides applied, secrets masked)")
    print(yaml.safe_dump(masked(config), sort_keys=False, default_flow_style=False), end="")
    return 0


def masked(config: Config) -> dict[str, Any]:
    """The config as plain data with every secret replaced by MASK (paths to secrets stay)."""
    data = config.model_dump(mode="json")
    for upstream in data["upstreams"]:
        if upstream.get("password") is not None:
            upstream["password"] = MASK
        upstream["url"] = mask_url(upstream["url"])
    data["public_url"] = mask_url(data["public_url"])
    data["database"]["url"] = mask_url(data["database"]["url"])
    data["redis"]["url"] = mask_url(data["redis"]["url"])
    data["storage"]["s3"]["endpoint_url"] = mask_url(data["storage"]["s3"]["endpoint_url"])
    return data


def mask_url(url: str | None) -> str | None:
    """``scheme://user:secret@host/...?password=secret`` with both secrets masked; the rest kept."""
    if not url:
        return url
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{user}@{hostport}"
        if not colon and parts.scheme.startswith("redis"):  # redis://secret@host: the lone part is the password
            netloc = f"{MASK}@{hostport}"
    else:
        netloc = parts.netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() in _QUERY_SECRETS else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
