"""The route table and the request-level middleware (request id, errors, API version header, metrics;
client rates)."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from proxy.errors import OCIError
from proxy.http import auth, ops, pull, push
from proxy.http.admin_api import setup_admin_api
from proxy.http.api import setup_packages_api
from proxy.http.mirror_api import setup_mirror_api
from proxy.http.peer import setup_peer_routes
from proxy.http.stats_api import setup_stats_api
from proxy.http.cache_api import setup_cache_api
from proxy.http.accesslog import request_id
from proxy.http.dispatch import V2Resource
from proxy.http.errors import error_response, http_exception_response
from proxy.http.keys import API_VERSION, CAUSE, CLIENT_LIMITS, METRICS, OUTCOME_STATUS, REQUEST_ID, STARTED
from proxy.http.ratelimit import client_limit_middleware
from proxy.web import setup_web
from proxy.logs import REQUEST_ID as REQUEST_ID_VAR

log = logging.getLogger("wharf.http")


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """The one middleware: the request's id, OCI errors for every failure, the API version header, metrics.

    A request is counted as what it came to: the status answered, or ``OUTCOME_STATUS`` when its
    answer broke off mid-body (499: the client closed the connection, as nginx counts it). A
    client that goes away is not an error of Wharf's: no traceback, no 500.
    """
    started = time.perf_counter()
    rid = request_id(request.headers.get("X-Request-Id"))
    request[REQUEST_ID] = rid
    request[STARTED] = started
    context = REQUEST_ID_VAR.set(rid)
    try:
        response = await handler(request)
    except OCIError as error:
        request[CAUSE] = error.message
        response = error_response(request, error)
    except web.HTTPException as exc:
        response = http_exception_response(request, exc)
    except Exception as exc:
        if isinstance(exc, ConnectionError) and _connection_gone(request):
            response = _broken_off(request, exc)
        else:
            log.exception("unhandled error on %s %s", request.method, request.path)
            request[CAUSE] = f"internal error: {type(exc).__name__}"
            response = error_response(request, OCIError("internal error"))
    except asyncio.CancelledError:  # the client went away mid-response (as nginx, count a 499)
        request[OUTCOME_STATUS] = 499
        request.app[METRICS].observe_request(request.match_info.route.name or "unknown", request.method,
                                             499, time.perf_counter() - started)
        raise
    finally:
        REQUEST_ID_VAR.reset(context)
    if not response.prepared and request.path.startswith("/v2"):
        response.headers["Docker-Distribution-API-Version"] = API_VERSION
    request.app[METRICS].observe_request(request.match_info.route.name or "unknown", request.method,
                                         request.get(OUTCOME_STATUS) or response.status,
                                         time.perf_counter() - started)
    return response


def _connection_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _broken_off(request: web.Request, exc: ConnectionError) -> web.StreamResponse:
    """The client's connection closed while the handler worked: a 499 that is never sent."""
    status = request.setdefault(OUTCOME_STATUS, 499)
    request.setdefault(CAUSE, "client closed the connection")
    log.debug("connection closed during %s %s: %s", request.method, request.path, str(exc) or type(exc).__name__)
    return web.Response(status=status)


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer the application sends carries the request's id (``X-Request-Id``)."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-Id"] = rid


def setup_routes(app: web.Application) -> None:
    app.middlewares.append(observe)
    app.on_response_prepare.append(_stamp_request_id)
    app.middlewares.append(client_limit_middleware(app[CLIENT_LIMITS], app[METRICS]))
    v2 = V2Resource()
    v2.add("base", "GET", pull.base)
    v2.add("catalog", "GET", push.catalog)
    v2.add("upload_start", "POST", push.start_upload)
    v2.add("upload", "PATCH", push.upload_chunk, "upload_chunk")
    v2.add("upload", "PUT", push.finish_upload, "upload_finish")
    v2.add("upload", "GET", push.upload_status, "upload_status")
    v2.add("upload", "DELETE", push.cancel_upload, "upload_cancel")
    v2.add("manifest", "GET", pull.manifest)
    v2.add("manifest", "HEAD", pull.manifest, "manifest_head")
    v2.add("manifest", "PUT", push.put_manifest, "manifest_put")
    v2.add("manifest", "DELETE", push.delete_manifest, "manifest_delete")
    v2.add("blob", "GET", pull.blob)
    v2.add("blob", "HEAD", pull.blob, "blob_head")
    v2.add("blob", "DELETE", push.delete_blob, "blob_delete")
    v2.add("tags", "GET", pull.tags)
    v2.add("tags", "HEAD", pull.tags, "tags_head")
    v2.add("referrers", "GET", pull.referrers)
    v2.add("referrers", "HEAD", pull.referrers, "referrers_head")
    app.router.register_resource(v2)
    r = app.router
    r.add_get("/token", auth.token, name="token")
    r.add_get("/metrics", ops.metrics, name="metrics")
    r.add_get("/healthz", ops.healthz, name="healthz")
    r.add_get("/readyz", ops.readyz, name="readyz")
    setup_admin_api(app)
    setup_packages_api(app)
    setup_mirror_api(app)
    setup_cache_api(app)
    setup_stats_api(app)
    setup_peer_routes(app)
    setup_web(app)  # the pages (proxy.web): last, so its 404 page answers only what nothing else does
