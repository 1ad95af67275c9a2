"""``GET /api/mirror/status``: how the mirror lists' syncs are doing and how they went, per image.

Server admins only (the lists and their errors describe the site's upstreams): anonymous callers
get 401 with a Basic challenge, other signed-in users 403. The answer is the stored status every
process writes (``proxy.mirror.status``), whichever process ran the sync::

    {"lists": [{"list", "state", "stale", "started_at", "finished_at", "updated_at",
                "images_synced_total", "bytes_synced_total", "failures_total", "last_success",
                "images": {"<name>": {"state", "tags", "blobs", "bytes", "fetched_bytes",
                                      "last_success", "last_error", "updated_at"}}}]}
"""

from __future__ import annotations

from aiohttp import web

from proxy.http.admin_api import api_handler, server_admin
from proxy.http.keys import MIRROR_STATUS


@api_handler
async def mirror_status(request: web.Request) -> web.Response:
    await server_admin(request)
    status = request.app[MIRROR_STATUS]
    return web.json_response({"lists": [status.of(name) for name in status.lists()]})


def setup_mirror_api(app: web.Application) -> None:
    app.router.add_route("GET", "/api/mirror/status", mirror_status, name="api_mirror_status")
