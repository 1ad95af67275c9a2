"""``mirror.schedule`` inside ``wharf serve``: the configured lists synced on a timetable.

Rules:
- a duration (``6h``) syncs right after start, then that long after each run began; a cron
  expression (``0 3 * * *``, UTC) syncs at its times;
- one process of the store runs the schedule: the one holding the schedule lock (kept while it
  lives; the others try again every ``RETRY_SECONDS``, so a dead scheduler is replaced);
- a cron expression whose next time never comes (``0 0 31 2 *``) is logged and ends the schedule;
- the list files are read at every run (edit them without a restart); a list that does not
  load, or a sync that fails, is logged and the next run comes as planned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Callable

from proxy.config import MirrorConfig, parse_duration
from proxy.mirror.lists import MirrorListError, load_list
from proxy.mirror.sync import MirrorSync, SyncBusy
from proxy.storage.blobs import BlobStore

log = logging.getLogger("wharf.mirror")
RETRY_SECONDS = 60.0


def next_delay(schedule: str, last_start: float | None, now: float) -> float:
    """Seconds until the next run."""
    interval = parse_duration(schedule)
    if interval is not None:
        return 0.0 if last_start is None else max(0.0, last_start + interval - now)
    from croniter import croniter

    upcoming = croniter(schedule, datetime.fromtimestamp(now, timezone.utc)).get_next(float)
    return max(0.0, upcoming - now)


async def run_schedule(config: MirrorConfig, blobs: BlobStore, make_sync: Callable[[], MirrorSync]) -> None:
    """Run forever (cancelled at shutdown)."""
    assert config.schedule is not None
    lock_path = blobs.root / "mirror-schedule.lock"
    lock = None
    try:
        while lock is None:
            lock = blobs.try_lock(lock_path)
            if lock is None:
                await asyncio.sleep(RETRY_SECONDS)
        last_start: float | None = None
        while True:
            try:
                delay = next_delay(config.schedule, last_start, time.time())
            except Exception as exc:  # a cron expression whose time never comes (0 0 31 2 *)
                log.error("mirror.schedule %r names no next time (%s): no scheduled syncs", config.schedule, exc)
                return
            await asyncio.sleep(delay)
            last_start = time.time()
            await _run_once(config, make_sync())
    finally:
        if lock is not None:
            blobs.unlock(lock)


async def _run_once(config: MirrorConfig, syncer: MirrorSync) -> None:
    for path in config.lists:
        try:
            mirror_list = load_list(path)
        except MirrorListError as exc:
            log.error("scheduled mirror sync skipped: %s", exc)
            continue
        try:
            report = await syncer.sync(mirror_list)
        except SyncBusy as exc:
            log.warning("scheduled mirror sync skipped: %s", exc)
            continue
        except Exception:
            log.exception("scheduled mirror sync of %s failed", mirror_list.name)
            continue
        fetched = sum(i.fetched_bytes for i in report.images)
        log.info("mirror list %s synced: %d of %d images, %d bytes fetched", mirror_list.name,
                 len(report.images) - len(report.failed), len(report.images), fetched,
                 extra={"list": mirror_list.name, "failed": [i.name for i in report.failed]})
