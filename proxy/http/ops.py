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
    """Ready when the store is writable (initialised, not full). Redis down is ``degraded``, still
    ready: serving works (coordination falls back to the local store), and a load balancer that
    took every replica out over a shared Redis outage would turn it into a total one."""
    problems = []
    root = request.app[CONFIG].storage.root
    if not (root / "blobs").is_dir():
        problems.append("storage root is not initialised")
    full = request.app[SPACE].problem()
    if full:
        problems.append(full)
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    if not await request.app[SHARED].ping():
        return web.json_response({"status": "ready", "degraded": [
            "redis does not answer: caches and locks are shared only by this machine's workers"]})
    return web.json_response({"status": "ready"})
