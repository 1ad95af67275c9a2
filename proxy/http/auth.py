"""``/token``: exchanges a client's Basic credentials for a Wharf token (``docker login`` + pull).

When the requested scope names an upstream repository, the credentials are first checked at that
upstream's token realm, so a wrong password fails at login/pull time with 401, not later.
"""

from __future__ import annotations

import time

from aiohttp import web

from proxy.errors import OCIError
from proxy.http.keys import ADDRESSING, TOKENS, UPSTREAMS
from proxy.registry.tokens import TOKEN_TTL
from proxy.upstream.auth import credential_from_header


def _scoped_names(request: web.Request) -> list[str]:
    names = []
    for scope in request.query.getall("scope", []):
        for item in scope.split(" "):
            parts = item.split(":")
            if len(parts) >= 3 and parts[0] == "repository":
                names.append(":".join(parts[1:-1]))
    return names


async def token(request: web.Request) -> web.Response:
    credential = credential_from_header(request.headers.get("Authorization"))
    if credential is not None and credential.scheme != "basic":
        credential = None
    if credential is not None:
        for name in _scoped_names(request):
            try:
                target = request.app[ADDRESSING].resolve(name, None)
            except OCIError:
                continue
            if target.upstream is not None:
                await request.app[UPSTREAMS][target.upstream].check_credentials(target.repo, credential)
    issued = await request.app[TOKENS].issue(credential)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return web.json_response({"token": issued, "access_token": issued, "expires_in": TOKEN_TTL,
                              "issued_at": now})
