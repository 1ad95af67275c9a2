"""Deterministic synthetic images, multi-arch indexes, and a pusher over the registry HTTP API.

The same ``seed`` and sizes always give the same bytes and digests: layer contents come from
``random.Random(seed)``, tar headers and gzip headers carry fixed timestamps and owners, and
JSON is serialised with sorted keys. Layer bytes are random, so gzip cannot shrink them and a
"1 MiB layer" really moves about 1 MiB over the wire.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from typing import Iterable

import aiohttp
from yarl import URL

Credentials = tuple[str, str]  # (username, password) for Basic auth

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

FIXED_MTIME = 1_700_000_000  # 2023-11-14, for tar entries and the config's "created"
DEFAULT_PLATFORMS = (("linux", "amd64"), ("linux", "arm64"))
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``, as registries name content."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic_auth_header(credentials: Credentials | None) -> dict[str, str]:
    """``{"Authorization": "Basic …"}`` for ``(user, password)``, or no headers for None."""
    if credentials is None:
        return {}
    token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def canonical_json(value: object) -> bytes:
    """Sorted keys, no spaces: the same object always serialises to the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Blob:
    """One blob (config or layer) with its digest and descriptor media type."""

    data: bytes
    digest: str
    media_type: str

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """A single-platform image: manifest bytes exactly as pushed, its config and layers."""

    manifest: bytes
    digest: str
    media_type: str
    config: Blob
    layers: tuple[Blob, ...]
    os: str = "linux"
    architecture: str = "amd64"

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def blobs(self) -> dict[str, bytes]:
        """Every blob the manifest references (config first), by digest."""
        return {blob.digest: blob.data for blob in (self.config, *self.layers)}

    @property
    def manifests(self) -> dict[str, tuple[bytes, str]]:
        """``{digest: (bytes, media type)}`` for every manifest in this image (just one)."""
        return {self.digest: (self.manifest, self.media_type)}


@dataclass(frozen=True)
class ImageIndex:
    """A multi-arch index (OCI index or Docker manifest list) over per-platform images."""

    manifest: bytes
    digest: str
    media_type: str
    images: tuple[Image, ...]

    @property
    def blobs(self) -> dict[str, bytes]:
        """Every blob of every platform image, by digest."""
        return {digest: data for image in self.images for digest, data in image.blobs.items()}

    @property
    def manifests(self) -> dict[str, tuple[bytes, str]]:
        """The index and every child manifest: ``{digest: (bytes, media type)}``."""
        found = {self.digest: (self.manifest, self.media_type)}
        for image in self.images:
            found.update(image.manifests)
        return found

    def image_for(self, architecture: str) -> Image:
        return next(image for image in self.images if image.architecture == architecture)


def make_layer(seed: str, size: int, media_type: str = DOCKER_LAYER) -> tuple[Blob, str]:
    """A gzip'd tar holding one file of ``size`` seeded-random bytes; returns (blob, diff_id).

    The diff_id is the digest of the uncompressed tar, as the image config's rootfs lists it.
    """
    content = random.Random(f"layer:{seed}").randbytes(size)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/{seed}.bin")
        info.size, info.mtime, info.mode = size, FIXED_MTIME, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(content))
    raw = tar_bytes.getvalue()
    compressed = gzip.compress(raw, compresslevel=1, mtime=0)
    return Blob(compressed, sha256_digest(compressed), media_type), sha256_digest(raw)


def make_image(seed: str = "image", layer_sizes: Iterable[int] = (1024, 4096), *,
               oci: bool = False, os: str = "linux", architecture: str = "amd64",
               labels: dict[str, str] | None = None) -> Image:
    """Build an image: config JSON plus one layer per size, in Docker schema2 or OCI types."""
    layer_type, config_type, manifest_type = (
        (OCI_LAYER, OCI_CONFIG, OCI_MANIFEST) if oci else (DOCKER_LAYER, DOCKER_CONFIG, DOCKER_MANIFEST))
    built = [make_layer(f"{seed}:{architecture}:{i}", size, layer_type)
             for i, size in enumerate(layer_sizes)]
    layers = tuple(blob for blob, _ in built)
    config_json = canonical_json({
        "architecture": architecture,
        "os": os,
        "created": "2023-11-14T22:13:20Z",
        "config": {"Labels": dict(labels or {}), "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in built]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"wharf-tests {seed}"}
                    for _ in built],
    })
    config = Blob(config_json, sha256_digest(config_json), config_type)
    manifest: dict = {"schemaVersion": 2, "mediaType": manifest_type,
                      "config": config.descriptor(),
                      "layers": [layer.descriptor() for layer in layers]}
    if oci and labels:
        manifest["annotations"] = dict(labels)
    manifest_bytes = canonical_json(manifest)
    return Image(manifest_bytes, sha256_digest(manifest_bytes), manifest_type, config, layers,
                 os, architecture)


def make_index(seed: str = "multi", layer_sizes: Iterable[int] = (1024, 4096), *,
               oci: bool = False,
               platforms: Iterable[tuple[str, str]] = DEFAULT_PLATFORMS) -> ImageIndex:
    """Build one image per (os, architecture) and an OCI index or Docker manifest list over them."""
    sizes = tuple(layer_sizes)
    images = tuple(make_image(seed, sizes, oci=oci, os=os_name, architecture=arch)
                   for os_name, arch in platforms)
    index_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [{"mediaType": image.media_type, "digest": image.digest,
                       "size": len(image.manifest),
                       "platform": {"os": image.os, "architecture": image.architecture}}
                      for image in images],
    })
    return ImageIndex(index, sha256_digest(index), index_type, images)


# --- pushing --------------------------------------------------------------------------------

class PushError(RuntimeError):
    """The registry refused a step of the push; the message has the status and body."""


async def _check(resp: aiohttp.ClientResponse, *expected: int) -> None:
    if resp.status not in expected:
        body = await resp.text()
        raise PushError(f"{resp.method} {resp.url} -> {resp.status}: {body[:500]}")


# the account a test Wharf at a base URL takes pushes from (``make_wharf`` registers its admin), used
# when a push names no ``auth`` of its own
PUSH_ACCOUNTS: dict[str, Credentials] = {}


def _push_auth(base_url: str, auth: Credentials | None) -> Credentials | None:
    return auth if auth is not None else PUSH_ACCOUNTS.get(base_url.rstrip("/"))


async def push_blob(session: aiohttp.ClientSession, base_url: str, repo: str, data: bytes,
                    auth: Credentials | None = None) -> str:
    """Upload ``data`` unless the repo already has it: POST a session, then one PUT ?digest=."""
    digest, headers = sha256_digest(data), basic_auth_header(_push_auth(base_url, auth))
    async with session.head(f"{base_url}/v2/{repo}/blobs/{digest}", headers=headers) as resp:
        if resp.status == 200:
            return digest
    async with session.post(f"{base_url}/v2/{repo}/blobs/uploads/", headers=headers) as resp:
        await _check(resp, 202)
        location = URL(resp.headers["Location"])
    upload_url = location if location.is_absolute() else URL(base_url).join(location)
    async with session.put(upload_url.update_query(digest=digest), data=io.BytesIO(data),
                           headers={**headers, "Content-Type": "application/octet-stream"}) as resp:
        await _check(resp, 201)
    return digest


async def push_manifest(session: aiohttp.ClientSession, base_url: str, repo: str,
                        reference: str, data: bytes, media_type: str,
                        auth: Credentials | None = None) -> str:
    """PUT manifest bytes by tag or digest; returns the digest the registry reports."""
    async with session.put(f"{base_url}/v2/{repo}/manifests/{reference}", data=data,
                           headers={**basic_auth_header(_push_auth(base_url, auth)),
                                    "Content-Type": media_type}) as resp:
        await _check(resp, 201)
        return resp.headers.get("Docker-Content-Digest", sha256_digest(data))


async def _push_image(session: aiohttp.ClientSession, base_url: str, repo: str, image: Image,
                      reference: str, auth: Credentials | None) -> None:
    for data in image.blobs.values():
        await push_blob(session, base_url, repo, data, auth)
    await push_manifest(session, base_url, repo, reference, image.manifest, image.media_type, auth)


async def push_image(base_url: str, repo: str, image: Image | ImageIndex, tag: str | None = "latest",
                     *, auth: Credentials | None = None,
                     session: aiohttp.ClientSession | None = None) -> None:
    """Push blobs, then child manifests by digest, then the top manifest by ``tag``.

    With ``tag=None`` the top manifest is pushed by digest only (an untagged image).
    """
    own_session = session is None
    session = session or aiohttp.ClientSession()
    try:
        reference = tag or image.digest
        if isinstance(image, ImageIndex):
            for child in image.images:
                await _push_image(session, base_url, repo, child, child.digest, auth)
            await push_manifest(session, base_url, repo, reference, image.manifest,
                                image.media_type, auth)
        else:
            await _push_image(session, base_url, repo, image, reference, auth)
    finally:
        if own_session:
            await session.close()
