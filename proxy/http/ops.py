"""Operator endpoints: ``/metrics``, ``/healthz`` (the process runs), ``/readyz`` (it can serve,
and which upstreams it serves offline)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.http.keys import CONFIG, METRICS, METRICS_EXCHANGE, OBJECTS, SHARED, SPACE


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics; with several workers, every worker's merged."""
    exchange = request.app.get(METRICS_EXCHANGE)
    body = exchange.exposition() if exchange is not None else generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store is writable (initialised, not full). Redis down, or an object storage
    bucket whose breaker is open (or half-open), is ``degraded``, still ready: serving works
    (coordination falls back to the local store, blobs come from the local store and upstream),
    and a load balancer that took every replica out over a shared outage would turn it into a
    total one. An offline site is ready too: ``offline`` names the upstreams served from the
    store alone."""
    problems = []
    config = request.app[CONFIG]
    root = config.storage.root
    if not (root / "blobs").is_dir():
        problems.append("storage root is not initialised")
    full = request.app[SPACE].problem()
    if full:
        problems.append(full)
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    answer: dict = {"status": "ready"}
    if config.offline or any(u.offline for u in config.upstreams):
        answer["offline"] = [u.name for u in config.upstreams if config.is_offline(u.name)]
    degraded = []
    if not await request.app[SHARED].ping():
        degraded.append("redis does not answer: caches and locks are shared only by this machine's workers")
    objects = request.app.get(OBJECTS)
    bucket = objects.degraded() if objects is not None else None
    if bucket:
        degraded.append(bucket)
    if degraded:
        answer["degraded"] = degraded
    return web.json_response(answer)
