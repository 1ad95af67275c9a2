"""``/token``: exchanges a client's Basic credentials for a token (``docker login`` + pull/push).

A Wharf account (user name + personal access token, ``wharf_pat_…``) gets a short-lived signed
token (``proxy.registry.identity``) naming, per repository asked for, the actions the account may
do there now (Docker's ``access`` claim); the registry decides again on every request, so a
revoked token or a changed role counts at once. A personal access token never reaches an upstream.

Any other credential is an upstream credential. Credentials are checked before a token is issued, so a wrong password fails at login/pull time
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
from proxy.http.identity import basic_user, caller_of
from proxy.http.keys import ADDRESSING, AUDIT, IDENTITY, LOGIN_THROTTLE, REGISTRY, TOKENS, UPSTREAMS
from proxy.registry.access import Action, Principal
from proxy.registry.identity import PAT_PREFIX, misplaced_wharf_secret
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


_ACTIONS = {"pull": Action.PULL, "push": Action.PUSH, "delete": Action.DELETE}


def _scopes(request: web.Request) -> list[tuple[str, list[str]]]:
    """``(repository name, actions)`` of every ``repository:NAME:ACTIONS`` scope asked for."""
    found = []
    for scope in request.query.getall("scope", []):
        for item in scope.split(" "):
            parts = item.split(":")
            if len(parts) >= 3 and parts[0] == "repository":
                found.append((":".join(parts[1:-1]), parts[-1].split(",")))
    return found


async def _granted(request: web.Request, principal: Principal) -> list[dict]:
    """Docker's ``access`` claim: per repository asked for, the actions the account may do now."""
    access = []
    for name, actions in _scopes(request)[:32]:
        try:
            target = request.app[ADDRESSING].resolve(name, None)
        except OCIError:
            continue
        wanted = list(_ACTIONS) if "*" in actions else [a for a in actions if a in _ACTIONS]
        granted = [a for a in wanted if await request.app[REGISTRY].allowed(principal, _ACTIONS[a], target)]
        access.append({"type": "repository", "name": name, "actions": granted})
    return access


def _answer(issued: str, ttl: int) -> web.Response:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return web.json_response({"token": issued, "access_token": issued, "expires_in": ttl, "issued_at": now})


async def token(request: web.Request) -> web.Response:
    header = request.headers.get("Authorization")
    user, password = basic_user(header)
    misplaced = misplaced_wharf_secret(user, password)  # refused by caller_of; the user name may be the secret
    if (password is not None and password.startswith(PAT_PREFIX)) or misplaced:
        audit = request.app[AUDIT]
        try:
            client = await caller_of(request)  # throttled; 401 for a token that does not stand
        except Unauthorized:
            audit.record("login.failed", None if misplaced else user, request.remote)
            raise
        access = await _granted(request, client.principal)
        issued, ttl = request.app[IDENTITY].sign(client.principal, access)
        audit.record("login", client.principal.user, request.remote, token_id=client.principal.token_id,
                     access=[f"{a['name']}:{','.join(a['actions'])}" for a in access])
        return _answer(issued, ttl)
    credential = credential_from_header(header)
    if credential is not None and credential.scheme != "basic":
        credential = None
    if credential is not None:
        throttle = request.app[LOGIN_THROTTLE]
        await throttle.check(request.remote, user)
        try:
            await _check_upstream_credential(request, credential)
        except Unauthorized:
            await throttle.failed(request.remote, user, "refused upstream")
            raise
    return _answer(await request.app[TOKENS].issue(credential), TOKEN_TTL)


async def _check_upstream_credential(request: web.Request, credential: Credential) -> None:
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
