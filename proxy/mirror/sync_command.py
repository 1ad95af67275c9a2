"""``wharf mirror sync LIST… [--config FILE]`` and ``wharf mirror status [--config FILE] [--json]``.

On a terminal a sync shows a live display (images, blobs, bytes, rate, ETA: rich); otherwise one
plain line per image as it finishes. Either way it ends with a summary: what was fetched, what
was already there, what failed and why. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from proxy.config import Config
from proxy.mirror.commands import opened_wharf, run_command
from proxy.mirror.lists import MirrorListError, load_list
from proxy.mirror.sync import ImageOutcome, SilentObserver, SyncBusy, SyncReport


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _outcome_line(outcome: ImageOutcome) -> str:
    fetched = f"{outcome.fetched_blobs} fetched ({_size(outcome.fetched_bytes)})"
    there = f"{outcome.blobs - outcome.fetched_blobs} already there ({_size(outcome.present_bytes)})"
    tags = ",".join(outcome.tags) or "-"
    line = f"{outcome.name}: {'ok' if outcome.ok else 'FAILED'} tags {tags}; blobs: {fetched}, {there}"
    if outcome.unmirrored:
        line += f"; {outcome.unmirrored} platform(s) left out"
    if outcome.failed:
        line += "; " + "; ".join(f"{tag}: {why}" if tag != "*" else why for tag, why in outcome.failed.items())
    return line + f" [{outcome.seconds:.1f}s]"


class PlainLines(SilentObserver):
    """One line per finished image on stdout: for logs and pipes."""

    def image_finished(self, outcome: ImageOutcome) -> None:
        print(_outcome_line(outcome), flush=True)


class LiveDisplay:
    """A rich progress display: images done of all, blobs done of found, bytes, rate, ETA."""

    def __init__(self, total_images: int) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        self._console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=self._console, transient=False)
        self._images = self.progress.add_task("images", total=total_images)
        self._blobs = self.progress.add_task("blobs", total=0)
        self._bytes = self.progress.add_task("bytes", total=0)

    def __enter__(self) -> "LiveDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def image_started(self, name: str) -> None:
        pass

    def image_finished(self, outcome: ImageOutcome) -> None:
        self.progress.advance(self._images)
        self.progress.console.print(_outcome_line(outcome), markup=False, highlight=False)

    def blob_found(self, size: int) -> None:
        task = self.progress.tasks[self._blobs]
        self.progress.update(self._blobs, total=(task.total or 0) + 1)
        task = self.progress.tasks[self._bytes]
        self.progress.update(self._bytes, total=(task.total or 0) + size)

    def blob_progress(self, fetched: int) -> None:
        self.progress.advance(self._bytes, fetched)

    def blob_done(self, size: int, fetched: bool) -> None:
        self.progress.advance(self._blobs)
        if not fetched:
            self.progress.advance(self._bytes, size)


@contextlib.contextmanager
def progress(images: int):
    """The observer a sync of ``images`` images reports to: the live display on a terminal,
    else one line per image."""
    if sys.stderr.isatty():
        with LiveDisplay(images) as display:
            yield display
    else:
        yield PlainLines()


def summary(report: SyncReport) -> list[str]:
    images = report.images
    fetched_blobs = sum(i.fetched_blobs for i in images)
    fetched_bytes = sum(i.fetched_bytes for i in images)
    present = sum(i.blobs - i.fetched_blobs for i in images)
    present_bytes = sum(i.present_bytes for i in images)
    rate = fetched_bytes / report.seconds if report.seconds > 0 else 0
    lines = [f"mirror list {report.list_name}: {len(images) - len(report.failed)} of {len(images)} images synced "
             f"in {report.seconds:.1f}s; fetched {fetched_blobs} blobs ({_size(fetched_bytes)}, {_size(rate)}/s), "
             f"already there {present} blobs ({_size(present_bytes)})"]
    for outcome in report.failed:
        for tag, why in outcome.failed.items():
            lines.append(f"  failed: {outcome.name}{'' if tag == '*' else ':' + tag}: {why}")
    return lines


async def _sync(config: Config, paths: list[str]) -> int:
    from proxy.mirror.sync import MirrorSync

    try:
        lists = [load_list(path) for path in paths]
    except MirrorListError as exc:
        print(f"wharf: {exc}", file=sys.stderr)
        return 2
    failed = False
    async with opened_wharf(config) as app:
        syncer = mirror_sync_of(app)
        for mirror_list in lists:
            try:
                with progress(len(mirror_list.images)) as observer:
                    report = await syncer.sync(mirror_list, observer)
            except SyncBusy as exc:
                print(f"wharf: {exc}", file=sys.stderr)
                failed = True
                continue
            for line in summary(report):
                print(line, flush=True)
            failed = failed or bool(report.failed)
    return 1 if failed else 0


def mirror_sync_of(app):
    """The MirrorSync of a started app (the CLI's, or a worker's schedule)."""
    from proxy.app import BLOBS
    from proxy.http import keys
    from proxy.mirror.sync import MirrorSync

    return MirrorSync(app[keys.PULLTHROUGH], app[keys.ADDRESSING], app[BLOBS], app[keys.MIRROR_RECORDS],
                      app[keys.MIRROR_STATUS], app[keys.CONFIG])


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z" if epoch else "-"


async def _status(config: Config, as_json: bool) -> int:
    from proxy.http import keys

    async with opened_wharf(config) as app:
        status = app[keys.MIRROR_STATUS]
        docs = [status.of(name) for name in status.lists()]
    if as_json:
        print(json.dumps({"lists": docs}, indent=2))
        return 0
    if not docs:
        print("no mirror list was synced on this store yet")
    for doc in docs:
        state = "running (its process is gone?)" if doc.get("stale") else doc["state"]
        print(f"{doc['list']}: {state}; started {_when(doc['started_at'])}, finished {_when(doc.get('finished_at'))}; "
              f"last success {_when(doc.get('last_success'))}")
        for name, image in sorted(doc["images"].items()):
            error = f"; last error: {image['last_error']}" if image.get("last_error") else ""
            print(f"  {name}: {image['state']}, {len(image['tags'])} tags, {_size(image['bytes'])}, "
                  f"last success {_when(image.get('last_success'))}{error}")
    return 0


def add_parsers(actions, add_config) -> None:
    """``sync`` and ``status`` under ``wharf mirror``."""
    sync = actions.add_parser("sync", help="fetch what mirror lists name from their upstreams (resumable)")
    sync.add_argument("lists", nargs="+", metavar="LIST", help="mirror list file (YAML)")
    add_config(sync)
    sync.set_defaults(run=lambda args: run_command(args, lambda config: _sync(config, args.lists)))
    status = actions.add_parser("status", help="what the syncs of this store did, per list and image")
    status.add_argument("--json", action="store_true", help="the same document /api/mirror/status answers")
    add_config(status)
    status.set_defaults(run=lambda args: run_command(args, lambda config: _status(config, args.json)))
