"""Media types, content negotiation and the little manifest parsing a registry needs."""

from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import Executor
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
MAX_DESCRIPTORS = 10_000  # layers (or child manifests) one manifest may list; config limits.max_manifest_descriptors
OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are parsed in a worker thread
MAX_SIZE = 2**63 - 1  # a descriptor's size is an int64 in the spec


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


_JSON_TYPES = {str: "a string", list: "an array", dict: "an object", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}


def _field(doc: dict, key: str, kind: type, what: str):
    """``doc[key]`` when present and not null, which must then be a ``kind``; else None."""
    value = doc.get(key)
    if value is not None and not isinstance(value, kind):
        raise ManifestInvalid(f"{what}{key} must be {_JSON_TYPES[kind]}, not {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _strings(doc: dict, key: str, what: str) -> tuple[str, ...]:
    values = _field(doc, key, list, what) or ()
    if not all(isinstance(v, str) for v in values):
        raise ManifestInvalid(f"{what}{key} must be an array of strings")
    return tuple(values)


def _annotations(doc: dict) -> dict[str, str]:
    annotations = _field(doc, "annotations", dict, "") or {}
    if not all(isinstance(v, str) for v in annotations.values()):
        raise ManifestInvalid("annotations must map strings to strings")
    return annotations


def _descriptor(raw: object, what: str) -> Descriptor:
    """A descriptor as the image spec defines it: a string digest, an integer size, strings."""
    if not isinstance(raw, dict):
        raise ManifestInvalid(f"{what} is not an object")
    digest, size = raw.get("digest"), raw.get("size")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{what}: digest must be a string, not {_json_type(digest)}")
    try:
        parsed = Digest.parse(digest)
    except DigestInvalid as exc:
        raise ManifestInvalid(f"{what}: {exc.message}") from None
    if type(size) is not int or not 0 <= size <= MAX_SIZE:  # not bool, float, or beyond int64
        raise ManifestInvalid(f"{what}: size must be an integer from 0 to {MAX_SIZE}, not {str(size)[:40]}")
    media_type = _field(raw, "mediaType", str, f"{what}: ") or ""
    return Descriptor(media_type, parsed, size, _strings(raw, "urls", f"{what}: "))


def _descriptors(doc: dict, key: str, max_descriptors: int) -> tuple[Descriptor, ...]:
    items = _field(doc, key, list, "") or ()
    if len(items) > max_descriptors:
        raise ManifestInvalid(f"{key} lists {len(items)} descriptors; at most {max_descriptors} are accepted")
    return tuple(_descriptor(item, f"{key}[{i}]") for i, item in enumerate(items))


def _schema1(doc: dict, media_type: str, max_descriptors: int) -> ParsedManifest:
    layers = _field(doc, "fsLayers", list, "") or ()
    if len(layers) > max_descriptors:
        raise ManifestInvalid(f"fsLayers lists {len(layers)} layers; at most {max_descriptors} are accepted")
    blobs = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ManifestInvalid(f"fsLayers[{i}] is not an object")
        blobs.append(_descriptor({"digest": layer.get("blobSum"), "size": 0}, f"fsLayers[{i}]"))
    return ParsedManifest(media_type or DOCKER_SCHEMA1_SIGNED, blobs=tuple(blobs))


def _refuse_descriptor_floods(body: bytes, max_descriptors: int) -> None:
    """Refuse, before any parse, a body with more digest keys than a manifest within the limit has.

    One scan of the bytes (C speed): a flood of descriptors never reaches ``json.loads``, which
    holds the interpreter for its whole run (~20 ms for 4 MB) and so stalls the event loop even
    from a worker thread. Besides its layers a manifest names a config and a subject.
    """
    limit = max_descriptors + 2
    for key in (b'"digest"', b'"blobSum"'):
        found = body.count(key)
        if found > limit:
            raise ManifestInvalid(f"manifest names {found} digests; at most {max_descriptors} descriptors "
                                  "are accepted")


def parse_manifest(body: bytes, content_type: str | None,
                   max_descriptors: int = MAX_DESCRIPTORS) -> ParsedManifest:
    """Parse a manifest or index body; the media type comes from the body, else the header.

    Whatever the body, the answer is a ParsedManifest or ManifestInvalid: every field the
    registry reads must have its spec's JSON type, and a manifest may list at most
    ``max_descriptors`` layers (or child manifests).
    """
    _refuse_descriptor_floods(body, max_descriptors)
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting too deep
        raise ManifestInvalid("manifest is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest is not a JSON object")
    declared = _field(doc, "mediaType", str, "")
    media_type = declared or (content_type or "").split(";")[0].strip()
    schema = doc.get("schemaVersion")
    if type(schema) is int and schema == 1:
        return _schema1(doc, media_type, max_descriptors)
    if not media_type:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if content_type and declared and content_type.split(";")[0].strip() != declared:
        raise ManifestInvalid("Content-Type does not match the manifest's mediaType")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    annotations = _annotations(doc)
    artifact_type = _field(doc, "artifactType", str, "")
    if media_type in INDEX_TYPES or "manifests" in doc:
        return ParsedManifest(media_type, manifests=_descriptors(doc, "manifests", max_descriptors),
                              subject=subject, artifact_type=artifact_type, annotations=annotations)
    blobs: list[Descriptor] = []
    config_type = None
    if doc.get("config") is not None:
        config = _descriptor(doc["config"], "config")
        config_type = config.media_type
        blobs.append(config)
    blobs.extend(_descriptors(doc, "layers", max_descriptors))
    return ParsedManifest(media_type, blobs=tuple(blobs), subject=subject,
                          artifact_type=artifact_type or config_type,
                          annotations=annotations, config_media_type=config_type)


async def parse_manifest_off_loop(body: bytes, content_type: str | None,
                                  max_descriptors: int = MAX_DESCRIPTORS,
                                  executor: Executor | None = None) -> ParsedManifest:
    """``parse_manifest`` in a worker thread (of ``executor``) for bodies over ``OFF_LOOP_BYTES``.

    Parsing and validating grows with the body (a 4 MB manifest lists ~36,000 descriptors), so a
    big one must not hold the event loop; small ones (nearly all) are parsed in place. Give a
    single-thread executor: parses that run at once only fight the event loop for the
    interpreter lock, so they go one at a time.
    """
    if len(body) <= OFF_LOOP_BYTES:
        return parse_manifest(body, content_type, max_descriptors)
    return await asyncio.get_running_loop().run_in_executor(executor, parse_manifest, body, content_type,
                                                            max_descriptors)
