"""Command line: ``wharf serve [--config FILE]``, ``wharf gc [--config FILE] [--dry-run]``,
``wharf healthcheck [--config FILE]``, ``wharf --version``, and the accounts commands operators
script (names kept as the issue wrote them)::

    wharf users add NAME [--admin]        wharf users list
    wharf orgs add ORG --owner NAME       wharf orgs members add ORG NAME [--role owner|member]
    wharf orgs list
    wharf tokens create NAME --scopes read:packages,write:packages[,delete:packages]
                                 [--expires DAYS] [--note TEXT]   (the token is the last line)
    wharf tokens list NAME                wharf tokens revoke ID
    wharf packages grant REPOSITORY (--user NAME | --org ORG) --role read|write|admin
    wharf packages revoke REPOSITORY (--user NAME | --org ORG)
    wharf packages visibility REPOSITORY private|internal|public
    wharf packages list [--owner NAME]
    wharf mirror sync|status|export|import|inventory …   (``proxy.mirror.commands``)
    wharf client-config containerd|podman|docker [--host HOST]   wharf config check FILE
                                                          (``proxy.config_commands``)
    wharf cache list|purge|warm …                         (``proxy.cache_commands``)

They act on the server's database (SQLite in the store, or ``database.url``) while it runs.
Exit status: 0 done, 1 refused (the reason on stderr), 2 a bad config.

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
    """Collect unreferenced pushed blobs and expired uploads; safe while ``wharf serve`` runs.
    Deleted package versions that may still be restored are kept, with what they reference."""
    import asyncio
    import json

    from proxy.registry.invalidation import Invalidation
    from proxy.registry.packages import Packages
    from proxy.storage.blobs import BlobStore
    from proxy.storage.database import DatabaseUnavailable, open_database
    from proxy.storage.meta import MetaStore
    from proxy.storage.uploads import UploadStore

    config = _config(args)
    if config is None:
        return 2
    root = config.storage.root
    if not (root / "blobs").is_dir():
        print(f"wharf: no store at {os.path.abspath(root)}", file=sys.stderr)
        return 2
    try:
        database = open_database(config)
    except DatabaseUnavailable as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return 2
    blobs = BlobStore(root)
    meta = MetaStore(root / "meta")
    uploads = UploadStore(root, config.limits.upload_idle_seconds, config.limits.max_layer_bytes)
    grace = config.gc.grace_seconds if args.grace is None else args.grace
    try:
        held = Packages(database, meta, blobs, Invalidation(), None, config.access).held_digests()
        report = asyncio.run(_collect(config, blobs, meta, uploads, grace, args.dry_run, held))
    finally:
        meta.close()
        database.close()
    print(json.dumps(report.as_dict()))
    return 0


async def _collect(config, blobs, meta, uploads, grace: float, dry_run: bool, held):
    """One gc pass; with object storage, what it removes is deleted from the bucket too, as the
    server's pass does (the same wiring: ``write_and_delete_through``)."""
    import asyncio

    from proxy.registry.gc import collect

    if config.storage.backend != "s3":
        return await collect(blobs, meta, uploads, grace, dry_run=dry_run, held=held)
    from proxy.storage.objects import BlobTier, ObjectStore, write_and_delete_through

    objects = ObjectStore(config.storage.s3)
    pending: set[asyncio.Task] = set()
    tier = BlobTier(objects, lambda work, name: pending.add(asyncio.ensure_future(work)), blobs.path)
    write_and_delete_through(blobs, tier)
    await objects.open()
    tier.start()
    try:
        report = await collect(blobs, meta, uploads, grace, dry_run=dry_run, held=held)
        await asyncio.sleep(0)  # deletes asked from the sweep's threads are spawned by now
        while pending:
            done = list(pending)
            pending.clear()
            await asyncio.gather(*done)
            await asyncio.sleep(0)
    finally:
        await objects.close()
    return report


# accounts --------------------------------------------------------------------------------------
def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _command_database(config):
    """The configured database for a console command, upgraded as the server would upgrade it;
    or the exit status after saying on stderr why it cannot be opened (2: a bad URL)."""
    from proxy.storage.database import DatabaseUnavailable, DatabaseUrlInvalid, open_database

    try:
        if config.database.url is None:
            config.storage.root.mkdir(parents=True, exist_ok=True)
        return open_database(config)
    except OSError as exc:
        print(f"wharf: storage.root: cannot create {config.storage.root}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except DatabaseUnavailable as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, DatabaseUrlInvalid) else 1


def _accounts_command(args: argparse.Namespace) -> int:
    """Open the configured database (upgrading it as the server would) and run one command."""
    config = _config(args)
    if config is None:
        return 2
    from sqlalchemy.exc import SQLAlchemyError

    from proxy.registry.accounts import AccountError, Accounts
    from proxy.registry.audit import AuditLog, audit_path
    from proxy.storage.database import describe_error

    database = _command_database(config)
    if isinstance(database, int):
        return database
    accounts = Accounts(database, AuditLog(audit_path(config)), frozenset(config.upstream_names()))
    try:
        for line in args.run(args, accounts, config):
            print(line)
    except AccountError as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return 1
    except (OSError, SQLAlchemyError) as exc:  # the audit log unwritable, the database gone meanwhile
        print(f"wharf: {args.command} {args.action}: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        database.close()
    return 0


def _local_note(name: str, config) -> list[str]:
    """With a default upstream, a new user or organisation takes its name away from it."""
    if config.default_upstream is None:
        return []
    return [f"note: {name}/ is now a local namespace: mirror clients' {name}/... no longer reach "
            f"the default upstream {config.default_upstream}"]


def _users_add(args, accounts, config):
    user = accounts.add_user(args.name, admin=args.admin)
    yield f"user {user.name} added{' (server admin)' if user.admin else ''}"
    yield from _local_note(user.name, config)


def _users_list(args, accounts, config):
    rows = [["NAME", "ADMIN", "ORGS", "CREATED"]]
    rows += [[u.name, "yes" if u.admin else "no",
              ",".join(f"{org}({role})" for org, role in u.orgs.items()) or "-", _when(u.created_at)]
             for u in accounts.list_users()]
    yield _table(rows)


def _orgs_add(args, accounts, config):
    org = accounts.add_org(args.org, owner=args.owner)
    yield f"organisation {org.name} added, owner {args.owner}"
    yield from _local_note(org.name, config)


def _orgs_list(args, accounts, config):
    rows = [["NAME", "MEMBERS", "CREATED"]]
    rows += [[o.name, ",".join(f"{user}({role})" for user, role in o.members.items()), _when(o.created_at)]
             for o in accounts.list_orgs()]
    yield _table(rows)


def _orgs_members_add(args, accounts, config):
    accounts.add_member(args.org, args.name, role=args.role)
    yield f"{args.name} is {'an owner' if args.role == 'owner' else 'a member'} of {args.org}"


def _tokens_create(args, accounts, config):
    token, secret = accounts.create_token(args.name, args.scopes, expires_days=args.expires, note=args.note)
    expiry = f"expires {_when(token.expires_at)}" if token.expires_at is not None else "never expires"
    yield f"token {token.id} for {token.user}: {','.join(token.scopes)}; {expiry}"
    yield "copy it now, it is not shown again:"
    yield secret


def _tokens_list(args, accounts, config):
    import time

    now = time.time()
    rows = [["ID", "TOKEN", "SCOPES", "STATE", "CREATED", "EXPIRES", "LAST USED", "NOTE"]]
    rows += [[str(t.id), t.hint + "...", ",".join(t.scopes), t.state(now), _when(t.created_at),
              _when(t.expires_at), _when(t.last_used_at), t.note.replace("\n", " ")]
             for t in accounts.list_tokens(args.name)]
    yield _table(rows)


def _tokens_revoke(args, accounts, config):
    token = accounts.revoke_token(args.id)
    yield f"token {token.id} of {token.user} ({token.hint}...) revoked"


def _add_accounts_commands(sub, add_config) -> None:
    users = sub.add_parser("users", help="user accounts").add_subparsers(dest="action", required=True)
    add = users.add_parser("add", help="add a user (their namespace NAME/ becomes local)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--admin", action="store_true", help="a server admin (admin of every package)")
    add.set_defaults(run=_users_add)
    users.add_parser("list", help="list users").set_defaults(run=_users_list)

    orgs = sub.add_parser("orgs", help="organisations").add_subparsers(dest="action", required=True)
    add = orgs.add_parser("add", help="add an organisation (its namespace ORG/ becomes local)")
    add.add_argument("org", metavar="ORG")
    add.add_argument("--owner", required=True, metavar="NAME", help="the user who owns it")
    add.set_defaults(run=_orgs_add)
    orgs.add_parser("list", help="list organisations and their members").set_defaults(run=_orgs_list)
    members = orgs.add_parser("members", help="organisation members").add_subparsers(dest="members", required=True)
    add = members.add_parser("add", help="add a member, or change a member's role")
    add.add_argument("org", metavar="ORG")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", choices=("owner", "member"), default="member")
    add.set_defaults(run=_orgs_members_add)

    tokens = sub.add_parser("tokens", help="personal access tokens").add_subparsers(dest="action", required=True)
    create = tokens.add_parser("create", help="create a token for a user; it is printed once, on the last line")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--scopes", required=True,
                        help="comma-separated: read:packages, write:packages, delete:packages")
    create.add_argument("--expires", type=int, metavar="DAYS", help="days until it expires (default: never)")
    create.add_argument("--note", default="", metavar="TEXT", help="what the token is for")
    create.set_defaults(run=_tokens_create)
    listing = tokens.add_parser("list", help="list a user's tokens (never their secrets)")
    listing.add_argument("name", metavar="NAME")
    listing.set_defaults(run=_tokens_list)
    revoke = tokens.add_parser("revoke", help="revoke a token at once, on every worker and replica")
    revoke.add_argument("id", type=int, metavar="ID")
    revoke.set_defaults(run=_tokens_revoke)
    for parser in (*users.choices.values(), *orgs.choices.values(), *members.choices.values(),
                   *tokens.choices.values()):
        if parser is not orgs.choices["members"]:
            add_config(parser)


# packages --------------------------------------------------------------------------------------
def _packages_command(args: argparse.Namespace) -> int:
    """Run one packages command as a server admin (actor ``cli`` in the audit log) on the configured
    database; running servers see the change at their next revision poll."""
    config = _config(args)
    if config is None:
        return 2
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from proxy.errors import OCIError
    from proxy.registry.access import SCOPES, Principal
    from proxy.registry.accounts import CLI
    from proxy.registry.audit import AuditLog, audit_path
    from proxy.registry.invalidation import Invalidation
    from proxy.registry.packages import InvalidRequest, PackageConflict, PackageNotFound, PackageRefused, Packages
    from proxy.storage.database import describe_error

    database = _command_database(config)
    if isinstance(database, int):
        return database
    # these commands touch neither the store's metadata nor its blobs: the service gets none
    packages = Packages(database, None, None, Invalidation(), AuditLog(audit_path(config)), config.access)
    operator = Principal(user=CLI, admin=True, scopes=frozenset(SCOPES))
    try:
        address = _package_address(packages, args.repository) if hasattr(args, "repository") else None
        for line in asyncio.run(args.run(args, packages, operator, address)):
            print(line)
    except (PackageNotFound, PackageConflict, PackageRefused, InvalidRequest) as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return 1
    except OCIError as exc:
        print(f"wharf: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, SQLAlchemyError) as exc:
        print(f"wharf: packages {args.action}: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        database.close()
    return 0


def _package_address(packages, repository: str) -> tuple[str, str, str]:
    """``owner/name`` as the packages API addresses it: (users | orgs, owner, name) (blocking)."""
    from proxy.registry.packages import PackageNotFound

    owner, _, name = repository.partition("/")
    if not owner or not name:
        raise PackageNotFound(f"{repository!r} is not a repository name (OWNER/NAME)")
    kind = "orgs" if packages.namespace_facts(owner).kind == "org" else "users"
    return kind, owner, name


def _grantee_words(args) -> str:
    return f"user {args.user}" if args.user is not None else f"the members of {args.org}"


async def _packages_grant(args, packages, operator, address) -> list[str]:
    await packages.set_role(operator, *address, user=args.user, org=args.org, role=args.role)
    return [f"{_grantee_words(args)} now {'have' if args.org is not None else 'has'} the {args.role} role "
            f"on {args.repository}"]


async def _packages_revoke(args, packages, operator, address) -> list[str]:
    await packages.set_role(operator, *address, user=args.user, org=args.org, role=None)
    return [f"{_grantee_words(args)} no longer {'hold' if args.org is not None else 'holds'} a role "
            f"on {args.repository}"]


async def _packages_visibility(args, packages, operator, address) -> list[str]:
    change = await packages.set_visibility(operator, *address, args.visibility)
    return [f"{args.repository} is {change.package.visibility}", *([f"note: {change.notice}"] if change.notice else [])]


async def _packages_list(args, packages, operator, address) -> list[str]:
    rows = [["REPOSITORY", "VISIBILITY", "VERSIONS", "ROLES", "UPDATED"]]
    for package in await packages.list_all(operator, args.owner):
        kind = "orgs" if package.owner_type == "Organization" else "users"
        grants = await packages.list_roles(operator, kind, package.namespace, package.name)
        roles = ",".join(f"{'org:' if g.kind == 'org' else ''}{g.name}({g.role})" for g in grants) or "-"
        rows.append([package.repository, package.visibility, str(package.version_count), roles,
                     _when(package.updated_at)])
    return [_table(rows)]


def _add_packages_commands(sub, add_config) -> None:
    packages = sub.add_parser("packages", help="local packages: roles and visibility").add_subparsers(
        dest="action", required=True)

    def grantee(parser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--user", metavar="NAME", help="a user")
        group.add_argument("--org", metavar="ORG", help="every member of the organisation, as a group")

    grant = packages.add_parser("grant", help="give a user, or an organisation's members, a role on a package "
                                              "(replacing the one they had)")
    grant.add_argument("repository", metavar="REPOSITORY", help="OWNER/NAME")
    grantee(grant)
    grant.add_argument("--role", required=True, metavar="read|write|admin")
    grant.set_defaults(run=_packages_grant)
    revoke = packages.add_parser("revoke", help="remove the role of a user, or of an organisation's members")
    revoke.add_argument("repository", metavar="REPOSITORY", help="OWNER/NAME")
    grantee(revoke)
    revoke.set_defaults(run=_packages_revoke)
    visibility = packages.add_parser("visibility", help="make a package private, internal or public")
    visibility.add_argument("repository", metavar="REPOSITORY", help="OWNER/NAME")
    visibility.add_argument("visibility", metavar="private|internal|public")
    visibility.set_defaults(run=_packages_visibility)
    listing = packages.add_parser("list", help="list packages, their visibility and who holds a role")
    listing.add_argument("--owner", metavar="NAME", help="only the packages of this user or organisation")
    listing.set_defaults(run=_packages_list)
    for parser in packages.choices.values():
        add_config(parser)


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
    _add_accounts_commands(sub, lambda p: p.add_argument(
        "--config", help="YAML config file (default: the embedded config/wharf.yaml)"))
    _add_packages_commands(sub, lambda p: p.add_argument(
        "--config", help="YAML config file (default: the embedded config/wharf.yaml)"))
    from proxy.mirror.commands import add_mirror_commands

    add_mirror_commands(sub, lambda p: p.add_argument(
        "--config", help="YAML config file (default: the embedded config/wharf.yaml)"))
    from proxy.config_commands import add_config_commands

    add_config_commands(sub, lambda p: p.add_argument(
        "--config", help="YAML config file (default: the embedded config/wharf.yaml)"))
    from proxy.cache_commands import add_cache_commands

    add_cache_commands(sub, lambda p: p.add_argument(
        "--config", help="YAML config file (default: the embedded config/wharf.yaml)"))
    args = parser.parse_args(argv)
    if args.command in ("mirror", "client-config", "config", "cache"):
        return args.run(args)
    if args.command in ("users", "orgs", "tokens"):
        return _accounts_command(args)
    if args.command == "packages":
        return _packages_command(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "healthcheck":
        return _healthcheck(args)
    if args.command == "gc":
        return _gc(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
