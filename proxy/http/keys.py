"""Typed keys for what the app holds (aiohttp ``web.AppKey``): the wiring handlers rely on."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from proxy.config import Config
from proxy.http.ratelimit import ClientLimiter
from proxy.http.replay import ReplayTable
from proxy.metrics import Metrics, MetricsExchange
from proxy.registry.addressing import Addressing
from proxy.registry.base import Registry
from proxy.registry.identity import Identity, LoginThrottle
from proxy.registry.invalidation import Invalidation
from proxy.registry.tokens import TokenService
from proxy.storage.database import Database
from proxy.storage.objects import ObjectStore
from proxy.storage.shared import SharedCache
from proxy.storage.space import StoreSpace
from proxy.upstream.client import Upstream

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
METRICS_EXCHANGE = web.AppKey("metrics_exchange", MetricsExchange)  # only with several workers
REGISTRY = web.AppKey("registry", Registry)
ADDRESSING = web.AppKey("addressing", Addressing)
TOKENS = web.AppKey("tokens", TokenService)
SHARED = web.AppKey("shared", SharedCache)
SPACE = web.AppKey("space", StoreSpace)
UPSTREAMS = web.AppKey("upstreams", dict[str, Upstream])
SENDFILE_POOL = web.AppKey("sendfile_pool", ThreadPoolExecutor)
REPLAYS = web.AppKey("replays", ReplayTable)
INVALIDATION = web.AppKey("invalidation", Invalidation)
CLIENT_LIMITS = web.AppKey("client_limits", ClientLimiter)
DATABASE = web.AppKey("database", Database)
OBJECTS = web.AppKey("objects", ObjectStore)  # only with storage.backend: s3
# issue 9's services; typed as object here to keep this module free of their imports while they land
ACCOUNTS = web.AppKey("accounts", object)   # proxy.registry.accounts.Accounts
PACKAGES = web.AppKey("packages", object)   # proxy.registry.packages.Packages
AUDIT = web.AppKey("audit", object)         # proxy.registry.audit.AuditLog
IDENTITY = web.AppKey("identity", Identity)
# mirroring (issue 10): typed as object to keep this module free of the service layer's imports
PULLTHROUGH = web.AppKey("pullthrough", object)     # proxy.registry.pullthrough.PullThroughRegistry (no guard)
MIRROR_RECORDS = web.AppKey("mirror_records", object)  # proxy.mirror.records.MirrorRecords
MIRROR_STATUS = web.AppKey("mirror_status", object)    # proxy.mirror.status.SyncStatus
# the web pages and the operator's tools (issue 11): typed as object, as above
WEB_SESSIONS = web.AppKey("web_sessions", object)  # proxy.web.sessions: signed-in browsers
CACHE_INDEX = web.AppKey("cache_index", object)    # what the cache holds, per upstream repository and tag
CACHE_HISTORY = web.AppKey("cache_history", object)  # the dashboard's samples of Wharf's own counters
CACHE_CONTROL = web.AppKey("cache_control", object)  # proxy.registry.cache_control.CacheControl: list, purge, warm
LOGIN_THROTTLE = web.AppKey("login_throttle", LoginThrottle)

API_VERSION = "registry/2.0"  # the Docker-Distribution-API-Version every /v2/ answer carries

# per-request notes the access log and metrics read
CACHE_STATUS = web.RequestKey("cache_status", str)
ERROR_CODE = web.RequestKey("error_code", str)
BODY_BYTES = web.RequestKey("body_bytes", int)  # body bytes of a streamed or sendfile answer
REQUEST_ID = web.RequestKey("request_id", str)  # echoed as X-Request-Id
STARTED = web.RequestKey("started", float)  # time.perf_counter() when the middleware took the request
UPSTREAM = web.RequestKey("upstream", str)  # the upstream a pull was addressed to
CAUSE = web.RequestKey("cause", str)  # what went wrong, in words: the error's message or why the answer broke off
# what a request whose answer broke off mid-body is counted as: 499 when the client closed the
# connection (as nginx), the upstream failure's status when a fill aborted it
OUTCOME_STATUS = web.RequestKey("outcome_status", int)
