"""What handlers get back from a registry: sources, not responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Callable, ContextManager, Protocol

from proxy.oci.digest import Digest
from proxy.registry.access import ANONYMOUS, Principal
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
    """Who is asking: the upstream credential they presented (None: anonymous upstream), and who
    they are for local packages (a Wharf account, or anonymous). The two never mix: a Wharf
    token is never a credential for an upstream, an upstream credential never a principal."""

    credential: Credential | None = None
    principal: Principal = ANONYMOUS


@dataclass(slots=True)
class ManifestResult:
    digest: Digest
    media_type: str
    size: int
    body: bytes | None  # None for HEAD (a hit from memory may carry it anyway)
    cache_status: str = "hit"
    shared_until: float = 0.0  # until when (time.time()) this exact answer holds for every client
    readers_until: float = 0.0  # until when it holds for this caller (a package that is not public)
    holds: Callable[[], bool] | None = None  # and only while this says so (offline: the store unchanged)


@dataclass(slots=True)
class BlobResult:
    """A complete file (served with sendfile) or a stream that follows a fill as it grows."""

    digest: Digest
    size: int | None
    path: Path | None = None
    # regions (fd, offset, count) of [start, end) as a fill writes them; batch: bytes to gather
    segments: Callable[[int, int | None, int], AsyncIterator[tuple[int, int, int]]] | None = None
    reading: Callable[[], ContextManager[None]] | None = None
    cache_status: str = "hit"
    media_type: str = "application/octet-stream"
    # a GET is answered with a 307 to this URL (object storage's presigned URL: bytes bypass Wharf)
    redirect: str | None = None


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


@dataclass(slots=True)
class UploadState:
    """Where a blob upload session stands: its id and how many bytes it holds."""

    id: str
    offset: int


@dataclass(slots=True)
class PushedManifest:
    digest: Digest
    tags: list[str] = field(default_factory=list)
    subject: Digest | None = None


@dataclass(slots=True)
class CatalogPage:
    repositories: list[str]
    next_query: str | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A request body on its way into an upload: the bytes, and what the client declared."""

    data: AsyncIterable[bytes]
    start: int | None = None   # first byte's offset, from Content-Range
    length: int | None = None  # from Content-Length or Content-Range


class Registry(Protocol):
    """Everything a pull handler may ask; handlers never know which implementation they hold."""

    async def manifest(self, target: Target, reference: str, accept: list[str], client: Client,
                       head: bool) -> ManifestResult: ...

    async def blob(self, target: Target, digest: Digest, client: Client, head: bool) -> BlobResult: ...

    async def tags(self, target: Target, n: int | None, last: str | None, client: Client) -> TagsPage: ...

    async def referrers(self, target: Target, digest: Digest, artifact_type: str | None,
                        client: Client) -> ReferrersResult: ...

    # push and manage: only local targets accept these; upstream ones raise Denied ----------------
    async def start_upload(self, target: Target, algorithm: str, client: Client) -> UploadState: ...

    async def mount_blob(self, target: Target, digest: Digest, source: Target | None,
                         client: Client) -> bool: ...

    async def upload_chunk(self, target: Target, upload_id: str, chunk: Chunk, client: Client) -> UploadState: ...

    async def upload_status(self, target: Target, upload_id: str, client: Client) -> UploadState: ...

    async def finish_upload(self, target: Target, upload_id: str, digest: Digest, chunk: Chunk | None,
                            client: Client) -> Digest: ...

    async def cancel_upload(self, target: Target, upload_id: str, client: Client) -> None: ...

    async def put_manifest(self, target: Target, reference: str, body: bytes, content_type: str | None,
                           tags: list[str], client: Client) -> PushedManifest: ...

    async def delete_manifest(self, target: Target, reference: str, client: Client) -> None: ...

    async def delete_blob(self, target: Target, digest: Digest, client: Client) -> None: ...

    async def catalog(self, n: int | None, last: str | None, client: Client) -> CatalogPage: ...
