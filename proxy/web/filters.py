"""The templates' filters: sizes, times and digests written for people."""

from __future__ import annotations

from datetime import datetime, timezone


def size(value: int | None) -> str:
    """``1.5 MB``: bytes in powers of 1000, as registries show image sizes."""
    if value is None:
        return "–"
    number = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if number < 1000 or unit == "TB":
            return f"{int(number)} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1000
    return f"{number:.1f} TB"


def when(value: float | None) -> str:
    """``2026-12-02 05:12 UTC``."""
    if value is None:
        return "–"
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def iso(value: float | None) -> str:
    """The machine-readable time for ``<time datetime>``."""
    if value is None:
        return ""
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_digest(digest: str) -> str:
    """``sha256:0123456789ab``: the algorithm and 12 hex digits, enough to tell versions apart."""
    algorithm, _, hexits = digest.partition(":")
    return f"{algorithm}:{hexits[:12]}" if hexits else digest


FILTERS = {"size": size, "when": when, "iso": iso, "short_digest": short_digest}
