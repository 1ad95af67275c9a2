"""How syncs are doing and how they went, per list and per image: for ``/api/mirror/status``, the
metrics and ``wharf mirror status``, whichever process (``wharf mirror sync``, a worker's schedule) ran them.

Rules:
- the status lives in the store's metadata (``doc:mirror-status:<list>``), so every worker and the
  CLI see the same; while a sync runs it is written at most every ``WRITE_EVERY`` seconds (each
  write costs the whole document: a list of thousands of images must not write it at every
  change), a change of an image's state at most that late (the run's first at once), and when
  the sync ends; ``doc:mirror-counters:<list>`` keeps totals across runs, ``doc:mirror-summary:<list>``
  the images counted by state (what the metrics read);
- an image is ``pending``, ``syncing``, ``synced`` or ``failed``; a sync is ``running``, ``done``
  or ``failed`` (something failed); a sync whose process died stays ``running`` with an old
  ``updated_at``: ``stale`` says so once it is older than ``STALE_AFTER``;
- the metrics are gauges read at scrape time (every worker reports the same stored values).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Iterator

from prometheus_client.core import GaugeMetricFamily

from proxy.storage.meta import MetaStore

WRITE_EVERY = 0.5
STALE_AFTER = 60.0


@dataclass(slots=True)
class ImageStatus:
    state: str = "pending"
    tags: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0           # bytes this image's content takes (fetched or already there)
    fetched_bytes: int = 0   # bytes fetched from upstream for it in this sync
    last_success: float | None = None
    last_error: str | None = None
    updated_at: float = 0.0


def _as_dict(image: ImageStatus) -> dict:
    """``asdict`` without its deep copy (six times faster: the document is written at once)."""
    return {name: getattr(image, name) for name in ImageStatus.__slots__}


class SyncStatus:
    """The status records of one store (app key ``keys.MIRROR_STATUS``)."""

    def __init__(self, meta: MetaStore) -> None:
        self._meta = meta

    def lists(self) -> list[str]:
        return sorted(self._meta.document("mirror-status-lists", fresh=True) or [])

    def of(self, name: str) -> dict | None:
        """The status document of list ``name`` (None: never synced)."""
        doc = self._meta.document(f"mirror-status:{name}", fresh=True)
        if doc is None:
            return None
        doc = dict(doc)
        doc["stale"] = doc.get("state") == "running" and time.time() - doc.get("updated_at", 0) > STALE_AFTER
        doc.update(self.counters(name))
        return doc

    def counters(self, name: str) -> dict:
        return dict(self._meta.document(f"mirror-counters:{name}", fresh=True)
                    or {"images_synced_total": 0, "bytes_synced_total": 0, "failures_total": 0, "last_success": None})

    def run(self, name: str, images: list[str]) -> "SyncRun":
        lists = self.lists()
        if name not in lists:
            self._meta.set_document("mirror-status-lists", sorted(lists + [name]))
        previous = self.of(name) or {}
        before = previous.get("images", {})
        return SyncRun(self, name, {image: ImageStatus(last_success=(before.get(image) or {}).get("last_success"))
                                    for image in images})

    def _write(self, name: str, doc: dict) -> None:
        states: dict[str, int] = {}
        for image in doc["images"].values():
            states[image["state"]] = states.get(image["state"], 0) + 1
        self._meta.set_document(f"mirror-status:{name}", doc)
        self._meta.set_document(f"mirror-summary:{name}", {"state": doc["state"], "updated_at": doc["updated_at"],
                                                           "states": states})

    def summary(self, name: str) -> dict:
        """The list's sync state and its images counted by state, without its images (for the metrics)."""
        summary = self._meta.document(f"mirror-summary:{name}", fresh=True)
        if summary is None:  # written before summaries were
            doc = self._meta.document(f"mirror-status:{name}", fresh=True) or {"images": {}}
            summary = {"state": doc.get("state"), "updated_at": doc.get("updated_at", 0), "states": {}}
            for image in doc["images"].values():
                summary["states"][image["state"]] = summary["states"].get(image["state"], 0) + 1
        return dict(summary, stale=summary["state"] == "running"
                    and time.time() - summary["updated_at"] > STALE_AFTER)

    def _count(self, name: str, images: int, fetched: int, failures: int, success_at: float | None) -> None:
        counters = self.counters(name)
        counters["images_synced_total"] += images
        counters["bytes_synced_total"] += fetched
        counters["failures_total"] += failures
        if success_at is not None:
            counters["last_success"] = success_at
        self._meta.set_document(f"mirror-counters:{name}", counters)

    # metrics -----------------------------------------------------------------------------------
    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Prometheus families, read from the stored status (a collector for the app's registry; with
        several workers each collects every second: it reads the lists' summaries, never their images)."""
        images = GaugeMetricFamily("wharf_mirror_images", "Images of a mirror list by state in its latest sync",
                                   labels=["list", "state"])
        synced = GaugeMetricFamily("wharf_mirror_synced_images", "Images synced by every sync of a list (total)",
                                   labels=["list"])
        synced_bytes = GaugeMetricFamily("wharf_mirror_synced_bytes",
                                         "Bytes fetched from upstream by every sync of a list (total)", labels=["list"])
        failures = GaugeMetricFamily("wharf_mirror_failures", "Images that failed to sync, every sync of a list (total)",
                                     labels=["list"])
        last = GaugeMetricFamily("wharf_mirror_last_success_timestamp_seconds",
                                 "When a sync of the list last finished with nothing failed", labels=["list"])
        running = GaugeMetricFamily("wharf_mirror_sync_running", "1 while a sync of the list runs", labels=["list"])
        for name in self.lists():
            doc = self.summary(name) | self.counters(name)
            states = doc["states"]
            for state in ("pending", "syncing", "synced", "failed"):
                images.add_metric([name, state], states.get(state, 0))
            synced.add_metric([name], doc.get("images_synced_total", 0))
            synced_bytes.add_metric([name], doc.get("bytes_synced_total", 0))
            failures.add_metric([name], doc.get("failures_total", 0))
            if doc.get("last_success"):
                last.add_metric([name], doc["last_success"])
            running.add_metric([name], 1 if doc.get("state") == "running" and not doc.get("stale") else 0)
        yield from (images, synced, synced_bytes, failures, last, running)

    def describe(self) -> list:
        return []


class SyncRun:
    """One sync of one list as it goes: images change state, bytes add up; written as it goes."""

    def __init__(self, status: SyncStatus, name: str, images: dict[str, ImageStatus]) -> None:
        self._status = status
        self.name = name
        self.images = images
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.state = "running"
        self._written = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self.write(force=True)
        self._written = 0.0  # the first change of an image's state is written at once

    def image(self, name: str) -> ImageStatus:
        return self.images.setdefault(name, ImageStatus())

    def set_state(self, name: str, state: str, error: str | None = None) -> None:
        image = self.image(name)
        image.state = state
        image.updated_at = time.time()
        if state == "synced":
            image.last_success = image.updated_at
            image.last_error = None
        if error is not None:
            image.last_error = error
        self.write(soon=True)

    def add_bytes(self, name: str, size: int, fetched: int) -> None:
        image = self.image(name)
        image.bytes += size
        image.fetched_bytes += fetched
        self.write()

    def write(self, force: bool = False, soon: bool = False) -> None:
        """Write the status if ``force`` or ``WRITE_EVERY`` seconds have passed since the last write;
        with ``soon``, a change held back is written once they have (a timer on the running loop)."""
        now = time.time()
        if not force and now - self._written < WRITE_EVERY:
            if soon and self._pending is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    pass  # no loop to wait on: written now
                else:
                    self._pending = loop.call_later(self._written + WRITE_EVERY - now, self.write, True)
                    return
            else:
                return
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._written = now
        self._status._write(self.name, {
            "list": self.name, "state": self.state, "started_at": self.started_at,
            "finished_at": self.finished_at, "updated_at": now,
            "images": {name: _as_dict(image) for name, image in self.images.items()}})

    def finish(self) -> None:
        failed = [n for n, i in self.images.items() if i.state != "synced"]
        self.state = "failed" if failed else "done"
        self.finished_at = time.time()
        self.write(force=True)
        synced = len(self.images) - len(failed)
        fetched = sum(i.fetched_bytes for i in self.images.values())
        self._status._count(self.name, synced, fetched, len(failed), None if failed else self.finished_at)
