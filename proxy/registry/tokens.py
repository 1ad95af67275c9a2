"""Tokens Wharf issues at ``/token`` so that ``docker login <wharf>`` plus pull works.

A client's Basic credential is exchanged for a self-contained token: ``wharf.`` + a Fernet token
(AES-128-CBC with HMAC-SHA256, from ``cryptography``) holding the credential and the time it was
issued. Nothing is stored: when the client presents the token, Wharf decrypts the credential and
uses it upstream on the client's behalf. A token older than ``TOKEN_TTL`` seconds, or one that
does not authenticate under a known key (tampered, forged, from another deployment), stands for
no credential. Upstream-issued Bearer tokens that a client presents are passed through.

The key, in this order:
- ``tokens.key_file`` when configured: the same file (e.g. a Kubernetes Secret) in every replica;
- with Redis and no key file: one key the replicas agree on through Redis (set-if-absent, re-read
  every minute, so a flushed Redis gets the key back from the replicas that hold it);
- else: ``storage.root/keys/token.key``, created at first start with mode 0600 and published
  atomically, so every worker on the store uses the same one. A replica that has not yet
  learnt the replicas' key (Redis down since it started) issues under this one meanwhile.
Every key this process has used stays valid for checking until it restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import tempfile
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from proxy.storage.shared import SharedCache
from proxy.upstream.auth import Credential

log = logging.getLogger("wharf.tokens")

TOKEN_TTL = 3600
ANONYMOUS_TOKEN = "wharf.anonymous"  # stands for no credential: nothing to encrypt or look up
_PREFIX = "wharf."
_SHARED_KEY = "token-key"  # the Redis key replicas agree on (without a key file)
_RECHECK_SECONDS = 60.0


class TokenKeyError(Exception):
    """The token key file cannot be read or holds no valid key; the message names the file."""


def read_key(path: Path) -> bytes:
    """The Fernet key in ``path``; TokenKeyError when it cannot be read or is not one."""
    try:
        key = path.read_bytes().strip()
        Fernet(key)
    except OSError as error:
        raise TokenKeyError(f"token key {path}: {error.strerror}") from None
    except ValueError:
        raise TokenKeyError(f"token key {path}: not a Fernet key (32 url-safe base64 bytes)") from None
    return key


def store_key(directory: Path) -> bytes:
    """This store's token key, created on first use: mode 0600, complete before it is visible.

    The new key is written to a private temporary file and hard-linked into place, which fails if
    another worker got there first; then everyone reads the one that won.
    """
    path = directory / "token.key"
    if not path.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".token.key.")  # mode 0600
        try:
            os.write(fd, Fernet.generate_key())
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temporary)
    return read_key(path)


class TokenService:
    """Issues self-contained tokens and resolves every client credential (tokens decrypted, ids keyed)."""

    def __init__(self, shared: SharedCache, key: bytes, *, agree_through_shared: bool) -> None:
        """``key`` is the configured or the store's key; with ``agree_through_shared`` (no key file
        configured) replicas agree on a key through Redis whenever it answers."""
        self._shared = shared
        self._local = key
        self._agree = agree_through_shared and shared.backend == "redis"
        self._agreed: bytes | None = None
        self._checked = float("-inf")
        self._id_keys: dict[bytes, bytes] = {}
        self._fernets = {key: Fernet(key)}  # every key this process used, newest first
        self._fernet = MultiFernet(list(self._fernets.values()))

    async def _key(self) -> bytes:
        """The key new tokens are issued under (see the module docstring for which)."""
        if self._agree and time.monotonic() - self._checked >= _RECHECK_SECONDS:
            offer = (self._agreed or Fernet.generate_key()).decode()
            agreed = await self._shared.agree(_SHARED_KEY, offer)
            if agreed is not None:
                self._checked = time.monotonic()
                self._adopt(agreed.encode())
        return self._agreed or self._local  # the replicas' key stays good while Redis is down

    def _adopt(self, key: bytes) -> None:
        try:
            Fernet(key)
        except ValueError:
            log.warning("the token key shared through redis is not a Fernet key; using the store's")
            return
        self._agreed = key
        if key not in self._fernets:
            self._fernets = {key: Fernet(key), **self._fernets}
            self._fernet = MultiFernet(list(self._fernets.values()))

    async def issue(self, credential: Credential | None) -> str:
        """A token carrying ``credential`` encrypted; anonymous clients share one constant."""
        if credential is None:
            return ANONYMOUS_TOKEN
        key = await self._key()
        return _PREFIX + self._fernets[key].encrypt(credential.secret.encode()).decode()

    async def resolve(self, credential: Credential | None) -> Credential | None:
        """Turn a Wharf token back into the credential it carries; pass anything else through.

        An expired, tampered or unknown Wharf token counts as no credential. Every credential
        comes back with a keyed ``id`` (what the meta store, the negative and authorization
        caches key by), never a bare hash of the secret.
        """
        if credential is None or credential.scheme == "bearer" and credential.secret == ANONYMOUS_TOKEN:
            return None
        key = await self._key()  # learn the replicas' key before checking a token another one issued
        if credential.scheme == "bearer" and credential.secret.startswith(_PREFIX):
            try:
                secret = self._fernet.decrypt(credential.secret[len(_PREFIX):].encode(), ttl=TOKEN_TTL)
                credential = Credential("basic", secret.decode())
            except (InvalidToken, UnicodeDecodeError):
                return None
        return Credential(credential.scheme, credential.secret, self._id_key(key))

    def _id_key(self, key: bytes) -> bytes:
        """The key credential ids are hashed with: derived from the token key, so replicas agree."""
        id_key = self._id_keys.get(key)
        if id_key is None:
            id_key = self._id_keys[key] = hmac.new(key, b"wharf credential id", hashlib.sha256).digest()
        return id_key
