"""The route table and the request-level middleware (errors, API version header, metrics; client rates)."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from proxy.errors import OCIError
from proxy.http import auth, ops, pull, push
from proxy.http.dispatch import V2Resource
from proxy.http.errors import error_response, http_exception_response
from proxy.http.keys import API_VERSION, CLIENT_LIMITS, METRICS
from proxy.http.ratelimit import client_limit_middleware

log = logging.getLogger("wharf.http")


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """The one middleware: OCI errors for every failure, the API version header, metrics."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except OCIError as error:
        response = error_response(request, error)
    except web.HTTPException as exc:
        response = http_exception_response(request, exc)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_response(request, OCIError("internal error"))
    except asyncio.CancelledError:  # the client went away mid-response (as nginx, count a 499)
        request.app[METRICS].observe_request(request.match_info.route.name or "unknown", request.method,
                                             499, time.perf_counter() - started)
        raise
    if not response.prepared and request.path.startswith("/v2"):
        response.headers["Docker-Distribution-API-Version"] = API_VERSION
    request.app[METRICS].observe_request(request.match_info.route.name or "unknown", request.method,
                                         response.status, time.perf_counter() - started)
    return response


def setup_routes(app: web.Application) -> None:
    app.middlewares.append(observe)
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
