"""``create_app(config)``: the one place that wires the layers together."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
import logging
import sqlite3
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from proxy.circuit import STATE_VALUES
from proxy.config import Config
from proxy.http import keys
from proxy.http.ratelimit import ClientLimiter
from proxy.http.replay import ReplayTable
from proxy.http.routes import setup_routes
from proxy.looplag import watch_loop_lag
from proxy.metrics import Metrics, MetricsExchange
from proxy.mirror.records import MirrorRecords
from proxy.mirror.schedule import run_schedule
from proxy.mirror.status import SyncStatus
from proxy.mirror.sync import MirrorSync
from proxy.registry.addressing import Addressing, LocalNamespaces
from proxy.registry.cache_control import CacheControl
from proxy.registry.accounts import Accounts
from proxy.registry.audit import AuditLog, audit_path
from proxy.registry.gc import collect
from proxy.registry.guard import AccessGuard
from proxy.registry.history import CacheHistory
from proxy.registry.identity import POLL_SECONDS as IDENTITY_POLL_SECONDS, Identity, LoginThrottle, jwt_key
from proxy.registry.invalidation import POLL_SECONDS, Invalidation
from proxy.registry.local import LocalRegistry
from proxy.registry.packages import Packages
from proxy.registry.peer_flight import PeerFlight
from proxy.registry.pullthrough import PullThroughRegistry
from proxy.registry.tasks import BackgroundTasks
from proxy.registry.tokens import TokenService, read_key, store_key
from proxy.storage.blobs import TMP_GRACE_SECONDS, BlobStore
from proxy.storage.budget import Budget
from proxy.storage.cache_index import FLUSH_SECONDS as INDEX_FLUSH_SECONDS, CacheIndex
from proxy.storage.database import open_database
from proxy.storage.meta import MetaStore
from proxy.storage.objects import BlobTier, ObjectStore, write_and_delete_through
from proxy.storage.shared import SharedCache
from proxy.storage.space import StoreSpace
from proxy.storage.uploads import UploadStore
from proxy.upstream.client import Upstream
from proxy.upstream.peer import PeerBlobs

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
    space = StoreSpace(root, config.storage.min_free_bytes, metrics)
    blobs = BlobStore(root, space)
    meta = MetaStore(root / "meta")
    # the workers of one machine share short-lived facts through diskcache, replicas through Redis
    shared = SharedCache(config.redis.url, root / "shared", timeout=config.redis.timeout,
                         retry_seconds=config.redis.retry_seconds, on_degraded=metrics.shared_degraded.set)
    # one hook for every answer kept in memory; other workers of the store hear of changes by a stamp
    invalidation = Invalidation(root / "invalidation.stamp")
    cache_index = CacheIndex(root, blobs, meta)  # hears of every tag meta records; eviction asks it for images
    budget = Budget(blobs, meta, config.storage.max_cache_bytes, metrics, images=cache_index,
                    on_tags_dropped=invalidation.tags_changed)  # counted at startup, off the loop
    blobs.on_added = budget.added
    tasks = BackgroundTasks()
    uploads = UploadStore(root, config.limits.upload_idle_seconds, config.limits.max_layer_bytes, space)
    local = LocalRegistry(blobs, meta, uploads, invalidation, config.limits.max_manifest_descriptors,
                          recent_manifests=config.fast_paths.hot_manifests)
    upstreams: dict[str, Upstream] = {}
    app[keys.CONFIG] = config
    app[keys.METRICS] = metrics
    app[keys.SHARED] = shared
    app[keys.SPACE] = space
    token_key = read_key(config.tokens.key_file) if config.tokens.key_file else store_key(root / "keys")
    tokens = app[keys.TOKENS] = TokenService(shared, token_key, agree_through_shared=config.tokens.key_file is None)
    app[keys.UPSTREAMS] = upstreams
    namespaces = LocalNamespaces(config.local_namespaces, invalidation)
    app[keys.ADDRESSING] = Addressing(config.upstream_names(), config.default_upstream, namespaces)
    pullthrough = PullThroughRegistry(local, upstreams, blobs, meta, shared, metrics,
                                      config.cache, config.limits, tasks, invalidation,
                                      hot_manifests=config.fast_paths.hot_manifests,
                                      offline=frozenset(u.name for u in config.upstreams if config.is_offline(u.name)))
    app[BLOBS], app[META], app[BUDGET], app[TASKS] = blobs, meta, budget, tasks
    app[UPLOADS] = uploads
    replays = app[keys.REPLAYS] = ReplayTable(before_local_hit=invalidation.poll)
    invalidation.subscribe(replays.drop_tag, replays.clear)
    app[keys.INVALIDATION] = invalidation
    app[keys.CLIENT_LIMITS] = ClientLimiter(config.clients)
    # accounts and packages (issue 9): wire new services here ------------------------------------
    database = app[keys.DATABASE] = open_database(config)  # migrated to the newest schema before serving
    audit = app[keys.AUDIT] = AuditLog(audit_path(config))
    accounts = app[keys.ACCOUNTS] = Accounts(database, audit, frozenset(config.upstream_names()))
    packages = app[keys.PACKAGES] = Packages(database, meta, blobs, invalidation, audit, config.access)
    # ---------------------------------------------------------------------------------------------
    # who callers are, remembered per database revision; a new revision drops every cached answer
    identity = app[keys.IDENTITY] = Identity(database, accounts, tokens, jwt_key(token_key), metrics)
    app[keys.LOGIN_THROTTLE] = LoginThrottle(shared, config.access, metrics)
    identity.on_change(invalidation.forget_here)  # every process polls the revision itself

    async def reload_namespaces() -> None:
        namespaces.replace_accounts(await identity.namespace_names())

    identity.on_change(reload_namespaces)
    app[keys.REGISTRY] = AccessGuard(pullthrough, identity, packages, meta, config.access)
    # mirroring and air gaps (issue 10): wire new services here --------------------------------
    app[keys.PULLTHROUGH] = pullthrough  # the operator's own path (mirror sync): no access guard
    app[keys.MIRROR_RECORDS] = MirrorRecords(meta, blobs, budget, invalidation)
    mirror_status = app[keys.MIRROR_STATUS] = SyncStatus(meta)
    metrics.registry.register(mirror_status)  # read from the store at scrape time, whoever synced
    # ---------------------------------------------------------------------------------------------
    # the web pages and the operator's tools (issue 11): wire new services here --------------------
    # the dashboard's history: one sampler per store, started once the exchange of workers is known
    history = app[keys.CACHE_HISTORY] = CacheHistory(metrics, meta, blobs, budget, config.web)

    async def sample_history(app: web.Application) -> None:
        await history.start(app.get(keys.METRICS_EXCHANGE))

    async def stop_history(app: web.Application) -> None:
        await history.stop()  # on shutdown: before the store closes

    app.on_startup.append(sample_history)
    app.on_shutdown.append(stop_history)
    app[keys.CACHE_INDEX] = cache_index
    app[keys.CACHE_CONTROL] = CacheControl(
        cache_index, blobs, meta, shared, invalidation, app[keys.ADDRESSING],
        frozenset(u.name for u in config.upstreams if config.is_offline(u.name)), frozenset(config.upstream_names()),
        lambda: MirrorSync(pullthrough, app[keys.ADDRESSING], blobs, app[keys.MIRROR_RECORDS], mirror_status, config))

    async def cache_index_lifecycle(app: web.Application) -> AsyncIterator[None]:
        """Index at start (in a thread, not waited for), flush counted pulls periodically and at the end."""
        indexing = asyncio.ensure_future(cache_index.ready())
        flusher = asyncio.ensure_future(_periodic(INDEX_FLUSH_SECONDS, cache_index.flush))
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            with contextlib.suppress(Exception):
                await indexing
            try:
                await asyncio.to_thread(cache_index.flush_blocking)
            except sqlite3.OperationalError as exc:  # a full disk at shutdown: the counts are best effort
                log.warning("the cache index's last pull counts were not written: %s", exc)
            cache_index.close()
    # ---------------------------------------------------------------------------------------------
    # fleet scale (issue 12): wire new services here ----------------------------------------------
    if config.storage.backend == "s3":
        # the bucket is a tier under the local store: written through, read through, deleted through
        objects = ObjectStore(config.storage.s3)
        tier = BlobTier(objects, tasks.spawn, blobs.path)
        write_and_delete_through(blobs, tier)  # eviction drops the local copy only (blobs.evict)
        pullthrough.blob_cache.objects = objects
        app[keys.OBJECTS] = objects
        metrics.object_storage_circuit.labels(objects.bucket).set_function(
            lambda: STATE_VALUES[objects.circuit.state])
        metrics.object_storage_missed.set_function(lambda: tier.missed)

        async def objects_lifecycle(app: web.Application) -> AsyncIterator[None]:
            await objects.open()
            tier.start()
            try:
                yield
            finally:
                await tasks.close()  # uploads in flight are cancelled (a multipart one aborted) before the client closes
                await objects.close()

        app.cleanup_ctx.append(objects_lifecycle)
    if config.cluster.advertise_url is not None:
        # replicas on disks of their own: one download per blob for the cluster, streamed between them
        assert config.cluster.secret is not None  # the config refuses an advertised replica without one
        peers_client = PeerBlobs(config.cluster.secret, metrics.peer_bytes_received)
        pullthrough.join_cluster(PeerFlight(shared, config.cluster.advertise_url, config.cluster.lease_seconds),
                                 peers_client)

        async def peers_lifecycle(app: web.Application) -> AsyncIterator[None]:
            try:
                yield
            finally:
                await peers_client.close()

        app.cleanup_ctx.append(peers_lifecycle)
    # ---------------------------------------------------------------------------------------------
    exchange = MetricsExchange(metrics, root / "metrics") if config.workers > 1 else None
    if exchange is not None:
        app[keys.METRICS_EXCHANGE] = exchange
    # threads that push stored blobs with os.sendfile; they mostly wait on sockets
    sendfile_pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="sendfile")
    app[keys.SENDFILE_POOL] = sendfile_pool

    async def gc_pass() -> None:
        held = await database.run(packages.held_digests)  # deleted versions that may still be restored
        report = await collect(blobs, meta, uploads, config.gc.grace_seconds, held=held)
        if report.removed or report.released_to_cache:
            await budget.scan_off_loop()  # recount pushed and cached bytes after content left or changed hands

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False, read_bufsize=1024 * 1024,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60))
        tasks.spawn(budget.scan_off_loop(), name="count the store")
        for upstream_config in config.upstreams:  # the registry holds this dict already
            upstreams[upstream_config.name] = Upstream(upstream_config, session, metrics, shared,
                                                       offline=config.is_offline(upstream_config.name))
        periodic = [asyncio.ensure_future(_periodic(config.cache.access_flush_interval, lambda: asyncio.to_thread(
                        blobs.flush_access_times))),
                    asyncio.ensure_future(_periodic(min(60.0, config.limits.upload_idle_seconds), uploads.expire)),
                    asyncio.ensure_future(watch_loop_lag(metrics)),
                    asyncio.ensure_future(_periodic(1.0, lambda: asyncio.to_thread(budget.tick))),
                    asyncio.ensure_future(_periodic(TMP_GRACE_SECONDS, lambda: asyncio.to_thread(
                        blobs.clean_tmp, TMP_GRACE_SECONDS)))]
        # changes published by other processes on this store (workers, the CLI)
        periodic.append(asyncio.ensure_future(_periodic(POLL_SECONDS, invalidation.poll)))
        await identity.poll()
        await reload_namespaces()
        periodic.append(asyncio.ensure_future(_periodic(IDENTITY_POLL_SECONDS, identity.poll)))
        if exchange is not None:
            periodic.append(asyncio.ensure_future(_periodic(1.0, exchange.publish)))
        if config.mirror.schedule and config.mirror.lists:
            periodic.append(asyncio.ensure_future(run_schedule(config.mirror, blobs, lambda: MirrorSync(
                pullthrough, app[keys.ADDRESSING], blobs, app[keys.MIRROR_RECORDS], mirror_status, config))))
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
            await identity.close()
            await asyncio.to_thread(budget.wait_idle, 30)  # an eviction thread still uses the metadata
            await session.close()
            sendfile_pool.shutdown(wait=False, cancel_futures=True)
            blobs.flush_access_times()
            await shared.close()
            await packages.close()  # the download counts not yet written
            meta.close()
            database.close()
            if exchange is not None:
                exchange.close()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(cache_index_lifecycle)  # after lifecycle: it ends first, while the metadata is open
    setup_routes(app)
    return app
