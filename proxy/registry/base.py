"""What handlers get back from a registry: sources, not responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, ContextManager, Protocol

from proxy.oci.digest import Digest
from proxy.upstream.auth import Credential


@dataclass(frozen=True, slots=True)
class Target:
    """A repository as Wharf understands it: on an upstream (by name), or local when None."""

    upstream: str | None
    repo: str

    @property
    def scope(self) -> str:
        """The key used for tags and visibility: ``<upstream>/<repo>``, or ``/<repo>`` when local."""
        return f"{self.upstream or ''}/{self.repo}"


@dataclass(frozen=True, slots=True)
class Client:
    """Who is asking: the credential they presented (None: anonymous)."""

    credential: Credential | None = None


@dataclass(slots=True)
class ManifestResult:
    digest: Digest
    media_type: str
    size: int
    body: bytes | None  # None for HEAD
    cache_status: str = "hit"


@dataclass(slots=True)
class BlobResult:
    """A complete file (served with sendfile) or a stream that follows a fill as it grows."""

    digest: Digest
    size: int | None
    path: Path | None = None
    stream: Callable[[int, int | None], AsyncIterator[bytes]] | None = None
    reading: Callable[[], ContextManager[None]] | None = None
    cache_status: str = "hit"
    media_type: str = "application/octet-stream"


@dataclass(slots=True)
class TagsPage:
    body: bytes
    next_query: str | None = None  # "n=..&last=.." of the next page, when there is one
    cache_status: str = "miss"


@dataclass(slots=True)
class ReferrersResult:
    body: bytes
    media_type: str
    filters_applied: str | None = None
    cache_status: str = "miss"
    headers: dict[str, str] = field(default_factory=dict)


class Registry(Protocol):
    """Everything a pull handler may ask; handlers never know which implementation they hold."""

    async def manifest(self, target: Target, reference: str, accept: list[str], client: Client,
                       head: bool) -> ManifestResult: ...

    async def blob(self, target: Target, digest: Digest, client: Client, head: bool) -> BlobResult: ...

    async def tags(self, target: Target, n: int | None, last: str | None, client: Client) -> TagsPage: ...

    async def referrers(self, target: Target, digest: Digest, artifact_type: str | None,
                        client: Client) -> ReferrersResult: ...
