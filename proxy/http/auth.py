"""``/token``: exchanges a client's Basic credentials for a Wharf token (``docker login`` + pull).

Credentials are checked before a token is issued, so a wrong password fails at login/pull time
with 401, not later:
- when the requested scope names an upstream repository, at that upstream;
- with no repository scope at all (``docker login <wharf>`` asks for a token with none), at every
  upstream: a login is refused when an upstream that asks for authentication refused the
  credential and none accepted it. Wharf holds no accounts of its own: a credential is good if it
  is good somewhere behind Wharf, and which upstream it is for only shows at pull time, where it is
  checked again per repository. An upstream that asks for no authentication, or that cannot be
  reached, neither accepts nor refuses.
Anonymous clients (no credentials) get a token that stands for no credential.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from proxy.errors import OCIError, Unauthorized
from proxy.http.keys import ADDRESSING, TOKENS, UPSTREAMS
from proxy.registry.tokens import TOKEN_TTL
from proxy.upstream.auth import Credential, credential_from_header
from proxy.upstream.client import Upstream


def _scoped_names(request: web.Request) -> list[str]:
    names = []
    for scope in request.query.getall("scope", []):
        for item in scope.split(" "):
            parts = item.split(":")
            if len(parts) >= 3 and parts[0] == "repository":
                names.append(":".join(parts[1:-1]))
    return names


async def check_login(upstreams: list[Upstream], credential: Credential) -> None:
    """Raise Unauthorized unless some upstream accepts ``credential`` or none refuses it.

    Upstreams are asked concurrently; the first acceptance ends the check.
    """
    tasks = [asyncio.ensure_future(upstream.check_credentials(None, credential)) for upstream in upstreams]
    refusal: Unauthorized | None = None
    try:
        for finished in asyncio.as_completed(tasks):
            try:
                if await finished:
                    return
            except Unauthorized as error:
                refusal = refusal or error
            except OCIError:
                pass  # unreachable, rate-limited, untrusted realm: it can say nothing about the credential
    finally:
        for task in tasks:
            task.cancel()
    if refusal is not None:
        raise Unauthorized("no upstream accepted the credentials")


async def token(request: web.Request) -> web.Response:
    credential = credential_from_header(request.headers.get("Authorization"))
    if credential is not None and credential.scheme != "basic":
        credential = None
    if credential is not None:
        names = _scoped_names(request)
        for name in names:
            try:
                target = request.app[ADDRESSING].resolve(name, None)
            except OCIError:
                continue
            if target.upstream is not None:
                await request.app[UPSTREAMS][target.upstream].check_credentials(target.repo, credential)
        if not names:
            await check_login(list(request.app[UPSTREAMS].values()), credential)
    issued = await request.app[TOKENS].issue(credential)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return web.json_response({"token": issued, "access_token": issued, "expires_in": TOKEN_TTL,
                              "issued_at": now})
