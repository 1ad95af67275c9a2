"""``create_app(config)``: the one place that wires the layers together."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
import logging
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from proxy.config import Config
from proxy.http import keys
from proxy.http.ratelimit import ClientLimiter
from proxy.http.replay import ReplayTable
from proxy.http.routes import setup_routes
from proxy.looplag import watch_loop_lag
from proxy.metrics import Metrics, MetricsExchange
from proxy.registry.addressing import Addressing
from proxy.registry.gc import collect
from proxy.registry.local import LocalRegistry
from proxy.registry.pullthrough import PullThroughRegistry
from proxy.registry.tasks import BackgroundTasks
from proxy.registry.tokens import TokenService
from proxy.storage.blobs import BlobStore
from proxy.storage.budget import Budget
from proxy.storage.meta import MetaStore
from proxy.storage.shared import SharedCache
from proxy.storage.uploads import UploadStore
from proxy.upstream.client import Upstream

log = logging.getLogger("wharf")

BLOBS = web.AppKey("blobs", BlobStore)
META = web.AppKey("meta", MetaStore)
BUDGET = web.AppKey("budget", Budget)
TASKS = web.AppKey("tasks", BackgroundTasks)
UPLOADS = web.AppKey("uploads", UploadStore)


async def _periodic(interval: float, action) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            result = action()
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("periodic %s failed", getattr(action, "__name__", action))


def create_app(config: Config) -> web.Application:
    """Build the application; stores open now, network clients open at startup (cleanup_ctx)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    metrics = Metrics()
    root = config.storage.root
    blobs = BlobStore(root)
    meta = MetaStore(root / "meta")
    # the workers of one machine share short-lived facts through diskcache, replicas through Redis
    shared = SharedCache(config.redis.url, root / "shared")
    budget = Budget(blobs, meta, config.storage.max_cache_bytes, metrics)
    budget.scan()
    blobs.on_added = budget.added
    tasks = BackgroundTasks()
    uploads = UploadStore(root, config.limits.upload_idle_seconds, config.limits.max_layer_bytes)
    local = LocalRegistry(blobs, meta, uploads)
    upstreams: dict[str, Upstream] = {}
    app[keys.CONFIG] = config
    app[keys.METRICS] = metrics
    app[keys.SHARED] = shared
    app[keys.TOKENS] = TokenService(shared)
    app[keys.UPSTREAMS] = upstreams
    app[keys.ADDRESSING] = Addressing(config.upstream_names(), config.default_upstream,
                                      local.is_local_repo)
    app[keys.REGISTRY] = PullThroughRegistry(local, upstreams, blobs, meta, shared, metrics,
                                             config.cache, config.limits, tasks)
    app[BLOBS], app[META], app[BUDGET], app[TASKS] = blobs, meta, budget, tasks
    app[UPLOADS] = uploads
    app[keys.REPLAYS] = ReplayTable()
    app[keys.CLIENT_LIMITS] = ClientLimiter(config.clients)
    exchange = MetricsExchange(metrics, root / "metrics") if config.workers > 1 else None
    if exchange is not None:
        app[keys.METRICS_EXCHANGE] = exchange
    # threads that push stored blobs with os.sendfile; they mostly wait on sockets
    sendfile_pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="sendfile")
    app[keys.SENDFILE_POOL] = sendfile_pool

    async def gc_pass() -> None:
        report = await collect(blobs, meta, uploads, config.gc.grace_seconds)
        if report.removed or report.released_to_cache:
            budget.scan()  # recount pushed and cached bytes after content left or changed hands

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False, read_bufsize=1024 * 1024,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60))
        for upstream_config in config.upstreams:  # the registry holds this dict already
            upstreams[upstream_config.name] = Upstream(upstream_config, session, metrics, shared)
        periodic = [asyncio.ensure_future(_periodic(config.cache.access_flush_interval, blobs.flush_access_times)),
                    asyncio.ensure_future(_periodic(min(60.0, config.limits.upload_idle_seconds), uploads.expire)),
                    asyncio.ensure_future(watch_loop_lag(metrics))]
        if exchange is not None:
            periodic.append(asyncio.ensure_future(_periodic(1.0, exchange.publish)))
        if config.gc.interval_seconds:
            periodic.append(asyncio.ensure_future(_periodic(config.gc.interval_seconds, gc_pass)))
        try:
            yield
        finally:
            for task in periodic:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await tasks.close()
            await session.close()
            sendfile_pool.shutdown(wait=False, cancel_futures=True)
            blobs.flush_access_times()
            await shared.close()
            meta.close()
            if exchange is not None:
                exchange.close()

    app.cleanup_ctx.append(lifecycle)
    setup_routes(app)
    return app
