"""Operator endpoints: ``/metrics``, ``/healthz`` (the process runs), ``/readyz`` (it can serve)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.http.keys import CONFIG, METRICS, METRICS_EXCHANGE, SHARED, SPACE


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics; with several workers, every worker's merged."""
    exchange = request.app.get(METRICS_EXCHANGE)
    body = exchange.exposition() if exchange is not None else generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store is writable (initialised, not full) and the shared cache (Redis, if
    configured) answers."""
    problems = []
    root = request.app[CONFIG].storage.root
    if not (root / "blobs").is_dir():
        problems.append("storage root is not initialised")
    full = request.app[SPACE].problem()
    if full:
        problems.append(full)
    if not await request.app[SHARED].ping():
        problems.append("shared cache (redis) does not answer")
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})
