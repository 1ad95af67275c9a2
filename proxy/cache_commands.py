"""``wharf cache …``: what the cache holds, purge, warm. Every command takes ``--config FILE`` and
works on that Wharf's store with the server running or not (one more process of the store:
``proxy.mirror.commands.opened_wharf``); a running server drops what it remembers of purged tags at
its next poll of the store's invalidation stamp.

    wharf cache list [--upstream U] [--repo R] [--json]
    wharf cache purge REF | --repo R | --upstream U [--older-than D] [--dry-run] [--json]
    wharf cache warm REF… [--platform OS/ARCH]…

REF is ``NAME:TAG`` (``NAME@DIGEST`` for purge: the tags naming it), NAME as clients pull it,
with its upstream's prefix (``docker.io/library/alpine:3.20``). Pull counts of a running server
reach the index every ``cache.access_flush_interval`` seconds.

Exit status: 0 done, 1 something failed (said on stderr / in the summary), 2 a bad config or argument.
"""

from __future__ import annotations

import json
import sys
import time

from proxy.config import Config
from proxy.mirror.commands import opened_wharf, run_command


def _size(n: float) -> str:
    from proxy.mirror.sync_command import _size as size

    return size(n)


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z" if epoch else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _control(app):
    from proxy.http import keys

    return app[keys.CACHE_CONTROL]


async def _list(config: Config, upstream: str | None, repo: str | None, as_json: bool) -> int:
    from proxy.http.cache_api import repository_json
    from proxy.registry.cache_control import CacheRequestInvalid

    async with opened_wharf(config) as app:
        try:
            repos, _ = await _control(app).repositories(upstream, repo)
        except CacheRequestInvalid as exc:
            print(f"wharf: {exc}", file=sys.stderr)
            return 2
    if as_json:
        print(json.dumps({"repositories": [repository_json(r) for r in repos]}, indent=2))
        return 0
    if not repos:
        print("the cache holds no upstream tag" + (" that matches" if upstream or repo else ""))
        return 0
    rows = [["REPOSITORY", "TAG", "DIGEST", "SIZE", "CACHED", "LAST PULL", "PULLS"]]
    for repository in repos:
        for image in repository.tags:
            rows.append([repository.name, image.tag, image.digest[:19], _size(image.size), _when(image.cached_at),
                         _when(image.last_pulled), str(image.pulls)])
    print(_table(rows))
    total = sum(r.size for r in repos)
    print(f"{len(repos)} repositories, {sum(len(r.tags) for r in repos)} tags, {_size(total)} "
          f"(content shared by a repository's tags counted once)")
    return 0


async def _purge(config: Config, args) -> int:
    from proxy.registry.cache_control import CacheRequestInvalid, parse_duration

    try:
        older_than = parse_duration(args.older_than) if args.older_than is not None else None
    except CacheRequestInvalid as exc:
        print(f"wharf: --older-than: {exc}", file=sys.stderr)
        return 2
    async with opened_wharf(config) as app:
        control = _control(app)
        try:
            images = await control.select(args.ref, args.repo, args.upstream, older_than)
        except CacheRequestInvalid as exc:
            print(f"wharf: {exc}", file=sys.stderr)
            return 2
        report = await control.purge(images, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    verb = "would drop" if report.dry_run else "dropped"
    for image in report.tags:
        print(f"{verb} {image.name}:{image.tag} ({image.digest[:19]}, {_size(image.size)})")
    for image in report.kept:
        print(f"kept {image.name}:{image.tag}: a mirror list or an import keeps it")
    removed = "would remove" if report.dry_run else "removed"
    line = (f"{len(report.tags)} tags {verb}; {removed} {len(report.removed)} manifests and blobs "
            f"({_size(report.freed_bytes)}); {report.still_needed} still needed by what is left")
    if report.in_use:
        line += f"; {len(report.in_use)} being read now, left for the budget"
    if not report.tags and not report.kept:
        line = "no cached tag matched: nothing to purge"
    print(line)
    return 0


async def _warm(config: Config, refs: list[str], platforms: list[str] | None) -> int:
    from proxy.mirror.sync import SyncBusy
    from proxy.mirror.sync_command import progress, summary
    from proxy.registry.cache_control import CacheRequestInvalid

    async with opened_wharf(config) as app:
        control = _control(app)
        try:
            warm_list = control.warm_list(refs, platforms)
        except CacheRequestInvalid as exc:
            print(f"wharf: {exc}", file=sys.stderr)
            return 2
        try:
            with progress(len(warm_list.images)) as observer:
                report = await control.warm(warm_list, observer)
        except SyncBusy as exc:
            print(f"wharf: another warm-up runs ({exc})", file=sys.stderr)
            return 1
    for line in summary(report):
        print(line.replace(f"mirror list {report.list_name}", "warm-up", 1), flush=True)
    return 1 if report.failed else 0


def add_cache_commands(sub, add_config) -> None:
    """``wharf cache list|purge|warm``."""
    cache = sub.add_parser("cache", help="what the cache holds; purge and warm it")
    actions = cache.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="cached repositories and tags: digest, size, last pull, pulls")
    listing.add_argument("--upstream", metavar="U", help="only this upstream's repositories")
    listing.add_argument("--repo", metavar="R", help="only this repository (as clients name it)")
    listing.add_argument("--json", action="store_true", help="the document GET /api/cache/repositories answers")
    add_config(listing)
    listing.set_defaults(run=lambda args: run_command(args, lambda config: _list(config, args.upstream, args.repo,
                                                                                 args.json)))

    purge = actions.add_parser("purge", help="drop cached tags and the content only they need (pushed and "
                                             "mirrored content stays); their next pull asks upstream")
    purge.add_argument("ref", nargs="?", metavar="REF", help="NAME:TAG, or NAME@DIGEST (the tags naming it)")
    purge.add_argument("--repo", metavar="R", help="every cached tag of this repository")
    purge.add_argument("--upstream", metavar="U", help="every cached tag of this upstream")
    purge.add_argument("--older-than", metavar="D", help="only tags not pulled for D (90m, 12h, 30d, 2w)")
    purge.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    purge.add_argument("--json", action="store_true", help="the document POST /api/cache/purge answers")
    add_config(purge)
    purge.set_defaults(run=lambda args: run_command(args, lambda config: _purge(config, args)))

    warm = actions.add_parser("warm", help="fetch images into the cache ahead of a rollout (evictable, not kept)")
    warm.add_argument("refs", nargs="+", metavar="REF", help="NAME[:TAG] (default tag: latest)")
    warm.add_argument("--platform", action="append", metavar="OS/ARCH",
                      help="only this platform of a multi-platform image (repeatable; default: all)")
    add_config(warm)
    warm.set_defaults(run=lambda args: run_command(args, lambda config: _warm(config, args.refs, args.platform)))
