"""Requests between replicas: signed with the cluster's shared secret, and the client that sends them.

Rules:
- a replica-to-replica request carries ``Wharf-Peer: <expires>.<hmac>``, an HMAC-SHA256 of the
  method, the path and the expiry (unix seconds) under ``cluster.secret``; it is good for
  ``SIGNATURE_SECONDS`` (a captured one cannot be replayed for long, nor for another path);
- the receiving replica compares in constant time and refuses anything else, whoever asks;
- the secret never appears in a log line, a URL or an error;
- ``PeerBlobs.open`` streams a blob another replica is filling (or holds) as upstream's client
  does: a sized stream of chunks. A replica that cannot be reached, does not have the blob, or
  whose stream breaks or stalls is ``PeerGone``: the caller asks elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import time
from typing import AsyncIterator

import aiohttp
from prometheus_client import Counter

from proxy.oci.digest import Digest
from proxy.upstream.answers import next_counted_chunk

SIGNATURE_HEADER = "Wharf-Peer"
PUBLIC_HEADER = "Wharf-Public"  # "1": the blob was fetched without a client's credential
SIGNATURE_SECONDS = 60
_MANIFEST_SECONDS = 5.0  # a manifest copy that takes longer is fetched from upstream instead
PEER_BLOB_PATH = "/_wharf/peer/blobs/{digest}"
_SIGNATURE = re.compile(r"[0-9]{1,12}\.[0-9a-f]{64}", re.ASCII)


class PeerGone(Exception):
    """The replica asked cannot give the blob (down, no such fill, or its stream broke).
    ``refused``: it refused our signature (the replicas do not share one secret)."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def sign(secret: bytes, method: str, path: str, now: float | None = None) -> str:
    """The ``Wharf-Peer`` header value for ``method path``, good for ``SIGNATURE_SECONDS``."""
    expires = int((time.time() if now is None else now) + SIGNATURE_SECONDS)
    return f"{expires}.{_mac(secret, method, path, expires)}"


def verify(secret: bytes, header: str | None, method: str, path: str, now: float | None = None) -> bool:
    """Whether ``header`` signs ``method path`` under ``secret`` and has not expired."""
    if not header or not _SIGNATURE.fullmatch(header):
        return False
    expires_text, _, mac = header.partition(".")
    expires = int(expires_text)
    current = time.time() if now is None else now
    if not current <= expires <= current + SIGNATURE_SECONDS + 5:  # a few seconds of clock skew
        return False
    return hmac.compare_digest(mac, _mac(secret, method, path, expires))


def _mac(secret: bytes, method: str, path: str, expires: int) -> str:
    return hmac.new(secret, f"{method}\n{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


class PeerBlob:
    """A blob streamed from another replica: its size (None: not known yet there), whether it is
    public, and ``async for`` over its chunks as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse, received: Counter) -> None:
        self.size: int | None = response.content_length
        self.public = response.headers.get(PUBLIC_HEADER) == "1"
        self.media_type = response.headers.get("Content-Type", "application/octet-stream")
        self._chunks = response.content.iter_chunks()
        self._received = received

    def __aiter__(self) -> PeerBlob:
        return self

    async def __anext__(self) -> bytes:
        return await next_counted_chunk(self._chunks, self._received,
                                        lambda exc: PeerGone(f"the stream broke: {type(exc).__name__}"))


class PeerBlobs:
    """Streams blobs from other replicas, with requests signed by the cluster's secret."""

    def __init__(self, secret: bytes, received: Counter, connect_timeout: float = 2.0,
                 read_timeout: float = 30.0) -> None:
        self._secret = secret
        self._received = received
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @contextlib.asynccontextmanager
    async def open(self, peer_url: str, digest: Digest) -> AsyncIterator[PeerBlob]:
        """GET ``digest`` from the replica at ``peer_url`` as a sized stream; PeerGone unless it
        answers 200 (a replica refuses what it neither holds nor fills)."""
        if self._session is None:
            # no pool limit: a fill waiting for a free connection would neither stream nor fall back
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=self._timeout,
                                                  auto_decompress=False, read_bufsize=1024 * 1024)
        path = PEER_BLOB_PATH.format(digest=digest)
        try:
            response = await self._session.get(f"{peer_url}{path}", allow_redirects=False,
                                               headers={SIGNATURE_HEADER: sign(self._secret, "GET", path)})
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PeerGone(f"{peer_url} does not answer: {type(exc).__name__}") from None
        try:
            if response.status != 200:
                raise PeerGone(f"{peer_url} answered {response.status}", refused=response.status == 403)
            yield PeerBlob(response, self._received)
        finally:
            response.release()

    async def manifest(self, peer_url: str, digest: Digest, limit: int) -> tuple[bytes, str]:
        """(body, Content-Type) of the manifest ``digest`` the replica at ``peer_url`` stored, at
        most ``limit`` bytes; PeerGone when it cannot give it. The caller verifies it."""
        try:
            async with asyncio.timeout(_MANIFEST_SECONDS), self.open(peer_url, digest) as source:
                if source.size is not None and source.size > limit:
                    raise PeerGone(f"{peer_url} holds {source.size} bytes under {digest}: no manifest")
                parts, total = [], 0
                async for chunk in source:
                    total += len(chunk)
                    if total > limit:
                        raise PeerGone(f"{peer_url} sent more than {limit} bytes for {digest}: no manifest")
                    parts.append(chunk)
                return b"".join(parts), source.media_type
        except TimeoutError:
            raise PeerGone(f"{peer_url} took over {_MANIFEST_SECONDS:g}s for the manifest {digest}") from None
