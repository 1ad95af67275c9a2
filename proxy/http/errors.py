"""The one writer of OCI error bodies."""

from __future__ import annotations

import json

from aiohttp import web

from proxy.errors import OCIError, Unauthorized, Unsupported
from proxy.http.keys import CONFIG, ERROR_CODE


class RouteUnknown(OCIError):
    code, status, default_message = "NOT_FOUND", 404, "no such endpoint"


def challenge(request: web.Request) -> str:
    """The Bearer challenge pointing a client at Wharf's own token endpoint.

    The realm is ``public_url`` when configured (Wharf behind a TLS terminator or another name),
    else the scheme and Host the request came with.
    """
    public = request.app[CONFIG].public_url
    realm = f"{public or f'{request.scheme}://{request.host}'}/token"
    value = f'Bearer realm="{realm}",service="wharf"'
    name = request.match_info.get("name")
    if name:
        actions = "pull" if request.method in ("GET", "HEAD") else "pull,push"
        value += f',scope="repository:{name}:{actions}"'
    return value


def error_response(request: web.Request, error: OCIError) -> web.Response:
    """``{"errors": [...]}`` with the error's own status; 401s carry a challenge."""
    headers = dict(error.headers)
    if isinstance(error, Unauthorized):
        headers.setdefault("WWW-Authenticate", challenge(request))
    body = None if request.method == "HEAD" else json.dumps({"errors": [error.to_json()]})
    response = web.Response(status=error.status, text=body, content_type="application/json",
                            headers=headers)
    request[ERROR_CODE] = error.code
    return response


def http_exception_response(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    """aiohttp's own 404/405 (no such endpoint / method) in OCI form; anything else as it is."""
    if exc.status == 404:
        return error_response(request, RouteUnknown())
    if exc.status == 405:
        return error_response(request, Unsupported(f"{request.method} is not supported here"))
    return web.Response(status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers)
