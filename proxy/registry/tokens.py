"""Tokens Wharf issues at ``/token`` so that ``docker login <wharf>`` plus pull works.

A client's Basic credentials are exchanged for an opaque token; the token maps (in the shared
cache, by its hash, for ``TOKEN_TTL`` seconds) to the credential, which is then used upstream on
the client's behalf. Upstream-issued Bearer tokens that a client presents are passed through.
"""

from __future__ import annotations

import hashlib
import secrets

from proxy.storage.shared import SharedCache
from proxy.upstream.auth import Credential

TOKEN_TTL = 3600
_ANONYMOUS = "-"
ANONYMOUS_TOKEN = "wharf.anonymous"  # stands for no credential: nothing to store or look up


def _key(token: str) -> str:
    return "tok:" + hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(self, shared: SharedCache) -> None:
        self._shared = shared

    async def issue(self, credential: Credential | None) -> str:
        """A new opaque token standing for ``credential``; anonymous clients share one constant."""
        if credential is None:
            return ANONYMOUS_TOKEN
        token = "wharf." + secrets.token_urlsafe(32)
        await self._shared.set(_key(token), credential.secret, TOKEN_TTL)
        return token

    async def resolve(self, credential: Credential | None) -> Credential | None:
        """Turn a Wharf token back into the credential it stands for; pass anything else through."""
        if credential is None or credential.scheme != "bearer" or not credential.secret.startswith("wharf."):
            return credential
        if credential.secret == ANONYMOUS_TOKEN:
            return None
        secret = await self._shared.get(_key(credential.secret))
        if secret is None or secret == _ANONYMOUS:
            return None
        return Credential("basic", secret)
