"""The cache dashboard, ``GET /cache``: how the cache is doing, with charts over the last hours.

Rules:
- it shows what ``GET /api/cache/stats`` answers the same viewer (``cache_stats``): the figures
  for everyone, image names only those the viewer may pull;
- the charts are inline SVG drawn here, on the server (no script needed to read them): each has
  a title and a description for screen readers, and its numbers in a table beside it;
- the page is a snapshot: reloading it (the "Reload" link) shows the figures of that moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence

from aiohttp import web

from proxy.http.stats_api import cache_stats
from proxy.web.filters import size as human_size
from proxy.web.render import page
from proxy.web.sessions import viewer_of

WIDTH, HEIGHT = 640, 200   # the charts' coordinate space (they scale to the page's width)
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 12, 28


@dataclass(frozen=True)
class Series:
    """One line of a chart: its label, its points in the chart's coordinates, and how it is drawn
    (colour and dash, so lines differ by more than colour)."""

    label: str
    points: str
    colour: str
    dash: str = ""


@dataclass(frozen=True)
class Chart:
    """A line chart ready for the template: lines, the y-axis ticks, the time axis, and the table."""

    id: str
    title: str
    description: str
    series: tuple[Series, ...]
    y_ticks: tuple[tuple[float, str], ...]   # (y coordinate, label)
    x_ticks: tuple[tuple[float, str], ...]   # (x coordinate, label)
    columns: tuple[str, ...]                 # the table: a time column, then one per series
    rows: tuple[tuple[str, ...], ...]
    empty: bool = False
    width: int = WIDTH
    height: int = HEIGHT
    plot: tuple[int, int, int, int] = field(default=(_LEFT, _TOP, WIDTH - _RIGHT, HEIGHT - _BOTTOM))


def _clock(at: float, seconds: bool = False) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%H:%M:%S" if seconds else "%H:%M")


def intervals(history: Sequence[dict], fields: Sequence[str]) -> list[tuple[float, dict[str, float]]]:
    """Per interval between consecutive points: (its end, how much each cumulative field grew)."""
    found = []
    for before, after in zip(history, history[1:]):
        if after["at"] <= before["at"]:
            continue
        found.append((after["at"], {name: max(0.0, after[name] - before[name]) for name in fields}))
    return found


def line_chart(chart_id: str, title: str, description: str, times: Sequence[float],
               lines: Sequence[tuple[str, Sequence[float | None], str, str]], fmt: Callable[[float], str],
               *, top: float | None = None) -> Chart:
    """Scale ``lines`` (label, values by time, colour, dash) into the plot; None leaves a gap."""
    left, upper, right, lower = _LEFT, _TOP, WIDTH - _RIGHT, HEIGHT - _BOTTOM
    values = [v for _, series, _, _ in lines for v in series if v is not None]
    highest = top if top is not None else max(values, default=0.0)
    highest = highest or 1.0
    start, end = (times[0], times[-1]) if times else (0.0, 1.0)
    span = (end - start) or 1.0
    fine = span < 600  # minutes alone would not tell the points apart

    def x(at: float) -> float:
        return round(left + (at - start) / span * (right - left), 1)

    def y(value: float) -> float:
        return round(lower - value / highest * (lower - upper), 1)

    drawn = []
    for label, series, colour, dash in lines:
        runs, run = [], []
        for at, value in zip(times, series):
            if value is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(f"{x(at)},{y(value)}")
        if run:
            runs.append(run)
        # a lone point still shows: repeat it so the polyline has a length
        points = " M ".join(" L ".join(r if len(r) > 1 else r * 2) for r in runs)
        drawn.append(Series(label, f"M {points}" if points else "", colour, dash))
    y_ticks = tuple((y(highest * share), fmt(highest * share)) for share in (0, 0.5, 1))
    x_ticks = ((x(start), _clock(start, fine)), (x(end), _clock(end, fine))) if times else ()
    rows = tuple((_clock(at, fine), *("–" if series[i] is None else fmt(series[i]) for _, series, _, _ in lines))
                 for i, at in enumerate(times))
    return Chart(chart_id, title, description, tuple(drawn), y_ticks, x_ticks,
                 ("Time (UTC)", *(label for label, _, _, _ in lines)), rows, empty=len(times) < 1)


def _ratio(value: float) -> str:
    return f"{value * 100:.0f}%"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def charts(stats: dict) -> list[Chart]:
    """The dashboard's charts over the history kept: hit ratio, bytes served, upstream requests,
    store size against the budget."""
    history = stats["history"]
    hours = stats["history_hours"]
    span = (f"the last {hours * 60:g} minutes" if hours < 1 else "the last hour" if hours == 1
            else f"the last {hours:g} hours")
    steps = intervals(history, ("hits", "misses", "bytes_from_cache", "bytes_from_upstream",
                                "upstream_requests", "upstream_requests_saved"))
    times = [at for at, _ in steps]
    ratio = [(d["hits"] / (d["hits"] + d["misses"])) if d["hits"] + d["misses"] else None for _, d in steps]
    cache_bytes = [d["bytes_from_cache"] for _, d in steps]
    upstream_bytes = [d["bytes_from_upstream"] for _, d in steps]
    sent = [d["upstream_requests"] for _, d in steps]
    saved = [d["upstream_requests_saved"] for _, d in steps]
    store_times = [p["at"] for p in history]
    stored = [float(p["cached_bytes"]) for p in history]
    budget = [float(p["budget_bytes"]) for p in history]

    def said(values: Sequence[float | None], fmt: Callable[[float], str]) -> str:
        known = [v for v in values if v is not None]
        return f"from {fmt(known[0])} to {fmt(known[-1])}, highest {fmt(max(known))}" if known else "no data yet"

    return [
        line_chart("chart-hits", "Hit ratio", f"Share of requests answered from the cache per interval over "
                   f"{span}: {said(ratio, _ratio)}.", times, [("Hit ratio", ratio, "#0a4fc4", "")], _ratio, top=1.0),
        line_chart("chart-bytes", "Bytes served", f"Bytes sent to clients per interval over {span}, from the "
                   f"cache ({said(cache_bytes, human_size)}) and from upstream ({said(upstream_bytes, human_size)}).",
                   times, [("From the cache", cache_bytes, "#0a4fc4", ""),
                           ("From upstream", upstream_bytes, "#8a1c14", "6 4")], human_size),
        line_chart("chart-requests", "Upstream requests", f"Requests sent upstream and requests the cache saved, "
                   f"per interval over {span}: sent {said(sent, _count)}, saved {said(saved, _count)}.",
                   times, [("Saved", saved, "#1e5631", ""), ("Sent upstream", sent, "#8a1c14", "6 4")], _count),
        line_chart("chart-store", "Store size", f"Cached content in the store against its budget over {span}: "
                   f"{said(stored, human_size)}; budget {human_size(budget[-1]) if budget else 'unknown'}.",
                   store_times, [("Cached", stored, "#0a4fc4", ""), ("Budget", budget, "#6b4d00", "2 4")],
                   human_size, top=max([*stored, *budget, 1.0])),
    ]


async def cache_page(request: web.Request) -> web.Response:
    """The dashboard, as this viewer may see it."""
    viewer = await viewer_of(request)
    stats = await cache_stats(request.app, viewer)
    return await page(request, "cache.html", {"stats": stats, "charts": charts(stats)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/cache", cache_page, name="web_cache")
