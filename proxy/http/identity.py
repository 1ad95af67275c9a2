"""``caller_of(request)``: who a request is from (``proxy.registry.identity`` has the rules), once
per request, with failed sign-ins counted and throttled per client address and user name."""

from __future__ import annotations

from aiohttp import web

from proxy.errors import Unauthorized
from proxy.http.keys import IDENTITY, LOGIN_THROTTLE
from proxy.registry.base import Client
from proxy.registry.identity import PAT_PREFIX, decode_basic

CALLER = web.RequestKey("caller", Client)


def basic_user(header: str | None) -> tuple[str | None, str | None]:
    """``(user, password)`` of a Basic Authorization header, else ``(None, None)``."""
    if not header:
        return None, None
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None, None
    return decode_basic(secret.strip())


async def caller_of(request: web.Request) -> Client:
    """The request's caller; Unauthorized for a Wharf token that does not stand, 429 while throttled."""
    client = request.get(CALLER)
    if client is not None:
        return client
    header = request.headers.get("Authorization")
    user, password = basic_user(header)
    if password is None and header and header[:7].lower() == "bearer " and header[7:].strip().startswith(PAT_PREFIX):
        password = header[7:].strip()
    signing_in = password is not None and password.startswith(PAT_PREFIX)
    throttle = request.app[LOGIN_THROTTLE]
    identity = request.app[IDENTITY]
    if signing_in and not identity.remembers(user, password):
        await throttle.check(request.remote, user)
    try:
        client = await identity.client(header)
    except Unauthorized:
        if signing_in:
            await throttle.failed(request.remote, user, "bad token")
        raise
    request[CALLER] = client
    return client
