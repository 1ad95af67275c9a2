"""A bare aiohttp + uvloop application answering manifest GET/HEAD from a dict.

No middleware, no access log, no lookups: what one aiohttp request handler costs on this
machine. Wharf answers repeated public hits below that layer (proxy/http/replayserver.py), so
this is the reference for its first hits and for everything that is not replayed.
Usage: python bare_aiohttp.py PORT MANIFEST_FILE MEDIA_TYPE TAG
"""

import hashlib
import sys

from aiohttp import web


def main() -> None:
    port, path, media_type, tag = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    body = open(path, "rb").read()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    headers = {"Content-Type": media_type, "Docker-Content-Digest": digest, "ETag": f'"{digest}"',
               "Docker-Distribution-API-Version": "registry/2.0"}
    known = {digest, tag}

    async def manifest(request: web.Request) -> web.Response:
        if request.match_info["ref"] not in known:
            raise web.HTTPNotFound()
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(body))})
        return web.Response(body=body, headers=headers)

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v2/", ping)
    app.router.add_route("GET", "/v2/{name:.+}/manifests/{ref}", manifest)
    app.router.add_route("HEAD", "/v2/{name:.+}/manifests/{ref}", manifest)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
