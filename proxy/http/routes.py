"""The route table and the request-level middleware (metrics, API version header)."""

from __future__ import annotations

import time

from aiohttp import web

from proxy.http import auth, ops, pull, push
from proxy.http.errors import error_middleware
from proxy.http.keys import METRICS

_NAME = r"{name:[^?#]+?}"


@web.middleware
async def metrics_middleware(request: web.Request, handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.match_info.route.name or "unknown"
        metrics = request.app[METRICS]
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


async def _api_version_header(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v2"):
        response.headers["Docker-Distribution-API-Version"] = "registry/2.0"


def setup_routes(app: web.Application) -> None:
    app.middlewares.extend([metrics_middleware, error_middleware])
    app.on_response_prepare.append(_api_version_header)
    r = app.router
    r.add_get("/v2/", pull.base, name="base")
    r.add_get("/v2", pull.base, name="base_noslash")
    r.add_get("/v2/_catalog", push.catalog, name="catalog")
    r.add_post(f"/v2/{_NAME}/blobs/uploads/", push.start_upload, name="upload_start")
    r.add_post(f"/v2/{_NAME}/blobs/uploads", push.start_upload, name="upload_start_noslash")
    _upload = f"/v2/{_NAME}/blobs/uploads/{{upload_id}}"
    r.add_route("PATCH", _upload, push.upload_chunk, name="upload_chunk")
    r.add_route("PUT", _upload, push.finish_upload, name="upload_finish")
    r.add_route("GET", _upload, push.upload_status, name="upload_status")
    r.add_route("DELETE", _upload, push.cancel_upload, name="upload_cancel")
    r.add_route("GET", f"/v2/{_NAME}/manifests/{{reference}}", pull.manifest, name="manifest")
    r.add_route("HEAD", f"/v2/{_NAME}/manifests/{{reference}}", pull.manifest, name="manifest_head")
    r.add_route("PUT", f"/v2/{_NAME}/manifests/{{reference}}", push.put_manifest, name="manifest_put")
    r.add_route("DELETE", f"/v2/{_NAME}/manifests/{{reference}}", push.delete_manifest, name="manifest_delete")
    r.add_route("GET", f"/v2/{_NAME}/blobs/{{digest}}", pull.blob, name="blob")
    r.add_route("HEAD", f"/v2/{_NAME}/blobs/{{digest}}", pull.blob, name="blob_head")
    r.add_route("DELETE", f"/v2/{_NAME}/blobs/{{digest}}", push.delete_blob, name="blob_delete")
    r.add_get(f"/v2/{_NAME}/tags/list", pull.tags, name="tags", allow_head=True)
    r.add_get(f"/v2/{_NAME}/referrers/{{digest}}", pull.referrers, name="referrers", allow_head=True)
    r.add_get("/token", auth.token, name="token")
    r.add_get("/metrics", ops.metrics, name="metrics")
    r.add_get("/healthz", ops.healthz, name="healthz")
    r.add_get("/readyz", ops.readyz, name="readyz")
