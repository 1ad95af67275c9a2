"""``wharf mirror …``: every command takes ``--config FILE`` and works on that Wharf's store, with the
server running or not (the store is shared by processes: the command is one more of them).

    wharf mirror sync LIST…            fetch what mirror lists name (``sync_command.py``)
    wharf mirror status                what the last syncs did, per image
    wharf mirror export …  / import …  / inventory …   bundles (``bundle_command.py``)

Exit status: 0 done, 1 something failed (the reasons on stderr / in the summary), 2 a bad config
or a bad argument.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import AsyncIterator, Callable

from aiohttp import web

from proxy.config import Config, ConfigError, load_config


@contextlib.asynccontextmanager
async def opened_wharf(config: Config) -> AsyncIterator[web.Application]:
    """The application ``wharf serve`` would run, started without a listener: its registry, stores
    and upstream clients, as one more process of the store (without the schedule and gc passes)."""
    from proxy.app import create_app

    config.storage.root.mkdir(parents=True, exist_ok=True)
    # the server's background duties (scheduled syncs, gc passes) are not a command's, nor is a
    # place among the workers whose metrics /metrics merges (a command's counters would vanish
    # from them when it exits; what a sync did is in the wharf_mirror_* gauges)
    config = config.model_copy(update={"workers": 1,
                                       "mirror": config.mirror.model_copy(update={"schedule": None}),
                                       "gc": config.gc.model_copy(update={"interval_seconds": 0})})
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        yield app
    finally:
        await runner.cleanup()


def run_command(args: argparse.Namespace, body: Callable[[Config], "asyncio.Future[int] | object"]) -> int:
    """Load the config (exit 2 when it is bad) and run ``body(config)`` on an event loop."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return 2
    try:
        return int(asyncio.run(body(config)))
    except KeyboardInterrupt:
        print("wharf: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def add_mirror_commands(sub, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    """``wharf mirror`` and its sub-commands; each module adds its own."""
    from proxy.mirror import bundle_command, sync_command

    mirror = sub.add_parser("mirror", help="mirror lists, bundles for air gaps, offline serving")
    actions = mirror.add_subparsers(dest="action", required=True)
    sync_command.add_parsers(actions, add_config)
    bundle_command.add_parsers(actions, add_config)
