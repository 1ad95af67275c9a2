"""The home page, ``GET /``: what this Wharf mirrors and how to point each client at it.

Rules:
- the same for every viewer: the upstreams (as clients name them, their aliases, which is the
  default, which are offline), the names of the mirror lists synced into this store, the
  namespaces declared local in the config (account namespaces are not listed: the packages page
  shows what a viewer may see of them);
- the client files are ``proxy.clientconfig.client_files`` for the address browsers reach Wharf
  at (public_url, else the request's host), the very text ``wharf client-config --host`` prints;
  a Host header that is no ``host[:port]`` gets the files for the configured address instead.
"""

from __future__ import annotations

from aiohttp import web

from proxy.clientconfig import CLIENTS, HostInvalid, client_files, wharf_netloc
from proxy.http.keys import CONFIG, MIRROR_STATUS
from proxy.web.render import page, registry_host

# how the page titles each client's section, and which tools read its file
CLIENT_TITLES = {
    "containerd": ("containerd", "ctr, and the kubelet through CRI"),
    "podman": ("podman, skopeo, buildah", "registries.conf"),
    "docker": ("Docker", "dockerd's daemon.json"),
}


def _host(request: web.Request) -> str:
    """The address the files and commands name: the page's own, unless its Host header is no host."""
    host = registry_host(request)
    try:
        return wharf_netloc(request.app[CONFIG], host)
    except HostInvalid:
        return wharf_netloc(request.app[CONFIG])


async def home(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    host = _host(request)
    upstreams = [{"name": u.name, "url": u.url, "aliases": u.aliases, "default": u.name == config.default_upstream,
                  "offline": config.is_offline(u.name)} for u in config.upstreams]
    status = request.app.get(MIRROR_STATUS)
    context = {
        "upstreams": upstreams,
        "all_offline": config.offline,
        "default_upstream": config.default_upstream,
        "local_namespaces": list(config.local_namespaces),
        "mirror_lists": [name for name in (status.lists() if status is not None else []) if name != "import"],
        "mirror_schedule": config.mirror.schedule,
        "example": next((u.name for u in config.upstreams if u.name != config.default_upstream), None)
                   or (config.upstreams[0].name if config.upstreams else None),
        "host": host,
        "clients": [(client, *CLIENT_TITLES[client], client_files(config, client, host)) for client in CLIENTS],
    }
    return await page(request, "home.html", context)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", home, name="web_home")
