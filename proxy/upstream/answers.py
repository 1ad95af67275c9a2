"""What an upstream answered, as the registry layer gets it: domain objects, never HTTP responses.

Rules:
- a body Wharf keeps (a manifest, a tag list, a referrers list) is read here to its end, and
  refused (UpstreamInvalid) as soon as it passes its cap: upstream cannot make Wharf hold more;
  a body that breaks off or stalls is Unavailable;
- a manifest is also refused when its Content-Length announces more than the cap, and when it
  ends before its Content-Length (truncated);
- a blob is handed up as a stream with the size upstream announced; its response is released
  here, when the caller leaves the stream's ``async with``; a download that breaks is Unavailable;
- headers are read here, once: sizes, digests (kept as sent: the registry decides what to trust),
  the next page of a tag list from ``Link``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol
from urllib.parse import urlsplit

import aiohttp

from proxy.errors import OCIError, Unavailable, UpstreamInvalid
from proxy.oci.digest import Digest

class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


MAX_TAG_LIST_BYTES = 16 * 1024 * 1024  # an upstream tag list (or page) Wharf reads, at most


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    """A manifest body exactly as upstream sent it, read whole and within the cap."""

    body: bytes
    media_type: str  # Content-Type without parameters, lower-cased; "" when upstream sent none
    digest: str | None  # Docker-Content-Digest as sent, unchecked

    @property
    def size(self) -> int:
        return len(self.body)

    def declared_digest(self) -> Digest | None:
        """The digest upstream says the body has (None: it said none); malformed is UpstreamInvalid."""
        if not self.digest:
            return None
        try:
            return Digest.parse(self.digest)
        except OCIError:
            raise UpstreamInvalid("upstream sent a malformed Docker-Content-Digest") from None


@dataclass(frozen=True, slots=True)
class UpstreamHead:
    """What a HEAD told: the digest (as sent, unchecked) and the size, when upstream said them."""

    digest: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class UpstreamTags:
    """One tag list (or page of it), and the query of the next page when upstream links one."""

    body: bytes
    next_query: str | None


@dataclass(frozen=True, slots=True)
class UpstreamReferrers:
    body: bytes
    media_type: str
    filters_applied: str | None


class UpstreamBlob:
    """A blob download: the size upstream announced (None: unknown), and ``async for`` over its
    chunks as received, never joined (``iter_any`` would copy them into one bytes)."""

    def __init__(self, response: aiohttp.ClientResponse, what: str, received: Counter) -> None:
        self.size: int | None = response.content_length
        self._chunks = response.content.iter_chunks()
        self._what = what  # "<digest> from <upstream>", for the error
        self._received = received  # bytes received from this upstream

    def __aiter__(self) -> UpstreamBlob:
        return self

    async def __anext__(self) -> bytes:
        """The next non-empty chunk; a connection that breaks or stalls past ``read_timeout`` is
        Unavailable."""
        return await next_counted_chunk(
            self._chunks, self._received,
            lambda exc: Unavailable(f"download of {self._what} broke: {type(exc).__name__}"))


async def next_counted_chunk(chunks, received: Counter, broken: Callable[[Exception], Exception]) -> bytes:
    """The next non-empty chunk of aiohttp's ``iter_chunks()``, counted in ``received``; a body that
    breaks or stalls raises ``broken(the error)``."""
    while True:
        try:
            chunk, _ = await chunks.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as exc:
            raise broken(exc) from None
        if chunk:
            received.inc(len(chunk))
            return chunk


async def read_capped(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, to its end (a single ``read(n)`` returns what has arrived so far), refused
    (UpstreamInvalid) as soon as it passes ``limit`` bytes: upstream cannot make Wharf hold more.
    A body that breaks off or stalls is Unavailable."""
    parts, total = [], 0
    try:
        async for data in response.content.iter_any():
            total += len(data)
            if total > limit:
                raise UpstreamInvalid(f"upstream {what} is too large (more than {limit} bytes)")
            parts.append(data)
    except OCIError:
        raise
    except Exception as exc:  # the connection broke or stalled past read_timeout
        raise Unavailable(f"reading the {what} from upstream failed: {type(exc).__name__}") from None
    return b"".join(parts)


async def read_manifest(response: aiohttp.ClientResponse, limit: int) -> UpstreamManifest:
    """A manifest body, whole (not truncated) and within ``limit`` bytes."""
    if (response.content_length or 0) > limit:
        raise UpstreamInvalid("upstream manifest is too large")
    body = await read_capped(response, limit, "manifest")
    if response.content_length is not None and len(body) != response.content_length:
        raise UpstreamInvalid("upstream manifest was truncated")
    content_type = response.headers.get("Content-Type", "")
    return UpstreamManifest(body, content_type.split(";")[0].strip().lower(),
                            response.headers.get("Docker-Content-Digest"))


def next_page_query(link_header: str | None) -> str | None:
    """The query string of a ``Link: <...?n=..&last=..>; rel="next"`` header, which clients follow."""
    if not link_header or "<" not in link_header:
        return None
    url = link_header.split("<", 1)[1].split(">", 1)[0]
    return urlsplit(url).query or None
