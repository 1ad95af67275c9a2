"""Media types, content negotiation and the little manifest parsing a registry needs."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from proxy.errors import DigestInvalid, ManifestInvalid
from proxy.oci.digest import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST,
                            DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

# What Wharf asks upstream for: every manifest type, so one cached answer serves every client.
UPSTREAM_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST,
                             DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1])

NON_DISTRIBUTABLE_LAYERS = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def parse_accept(header_values: list[str]) -> list[str]:
    """Join every Accept line (clients send several) into one list of bare media types."""
    return list(_parse_accept(tuple(header_values)))


@functools.lru_cache(maxsize=1024)
def _parse_accept(header_values: tuple[str, ...]) -> tuple[str, ...]:
    """Clients send the same few Accept headers over and over: each is parsed once."""
    types: list[str] = []
    for value in header_values:
        for part in value.split(","):
            media = part.split(";", 1)[0].strip().lower()
            if media:
                types.append(media)
    return tuple(types)


def accepts(accept: list[str], media_type: str) -> bool:
    """True when a client with this Accept list can take ``media_type``.

    No Accept at all, ``*/*`` and ``application/*`` accept anything; a client that lists only
    specific types gets only those. Schema 1 manifests are served to anyone who did not list
    types, as distribution does.
    """
    if not accept:
        return True
    media_type = media_type.lower()
    for item in accept:
        if item in ("*/*", "application/*") or item == media_type:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()

    @property
    def non_distributable(self) -> bool:
        return self.media_type in NON_DISTRIBUTABLE_LAYERS


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """What a registry needs from a manifest: its type, what it references, its subject."""

    media_type: str
    blobs: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    config_media_type: str | None = None


def _descriptor(raw: object) -> Descriptor:
    if not isinstance(raw, dict):
        raise ManifestInvalid("descriptor is not an object")
    try:
        digest = Digest.parse(str(raw["digest"]))
        size = int(raw["size"])
        media_type = str(raw.get("mediaType", ""))
    except (KeyError, TypeError, ValueError, DigestInvalid) as exc:
        raise ManifestInvalid(f"invalid descriptor: {exc}") from None
    if size < 0:
        raise ManifestInvalid("descriptor has a negative size")
    urls = raw.get("urls") or ()
    return Descriptor(media_type, digest, size, tuple(str(u) for u in urls))


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Parse a manifest or index body; the media type comes from the body, else the header."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ManifestInvalid("manifest is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest is not a JSON object")
    media_type = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if doc.get("schemaVersion") == 1:
        media_type = media_type or DOCKER_SCHEMA1_SIGNED
        layers = tuple(_descriptor({"digest": l.get("blobSum"), "size": 0})
                       for l in doc.get("fsLayers", []) if isinstance(l, dict))
        return ParsedManifest(media_type, blobs=layers)
    if not media_type:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if content_type and doc.get("mediaType") and content_type.split(";")[0].strip() != doc["mediaType"]:
        raise ManifestInvalid("Content-Type does not match the manifest's mediaType")
    subject = _descriptor(doc["subject"]) if doc.get("subject") else None
    annotations = doc.get("annotations") or {}
    if media_type in INDEX_TYPES or "manifests" in doc:
        manifests = tuple(_descriptor(m) for m in doc.get("manifests") or [])
        return ParsedManifest(media_type, manifests=manifests, subject=subject,
                              artifact_type=doc.get("artifactType"), annotations=annotations)
    blobs: list[Descriptor] = []
    config_type = None
    if doc.get("config"):
        config = _descriptor(doc["config"])
        config_type = config.media_type
        blobs.append(config)
    blobs.extend(_descriptor(l) for l in doc.get("layers") or [])
    return ParsedManifest(media_type, blobs=tuple(blobs), subject=subject,
                          artifact_type=doc.get("artifactType") or config_type,
                          annotations=annotations, config_media_type=config_type)
