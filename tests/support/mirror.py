"""Upstream content for mirroring tests: semver-tagged images, a multi-arch index and a signature-like
referrer, pushed to a real registry (Debian's docker-registry, which has no referrers API: the
referrer is found through the OCI fallback tag ``sha256-<hex>``), and mirror list files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from support.images import (OCI_INDEX, OCI_MANIFEST, Blob, Image, ImageIndex, canonical_json, make_image,
                            make_index, push_blob, push_image, push_manifest, sha256_digest)

SIGNATURE_TYPE = "application/vnd.dev.wharf-tests.signature.v1+json"
EMPTY_CONFIG = b"{}"


@dataclass(frozen=True)
class Signature:
    manifest: bytes
    digest: str
    payload: Blob
    subject: str


def make_signature(subject: Image | ImageIndex, seed: str = "sig") -> Signature:
    """An OCI artifact manifest whose subject is ``subject`` (what cosign or notation push)."""
    payload_bytes = f"signed {subject.digest} by {seed}".encode()
    payload = Blob(payload_bytes, sha256_digest(payload_bytes), "application/vnd.dev.wharf-tests.payload")
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIGNATURE_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(EMPTY_CONFIG),
                   "size": len(EMPTY_CONFIG)},
        "layers": [payload.descriptor()],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.manifest)},
    })
    return Signature(manifest, sha256_digest(manifest), payload, subject.digest)


async def push_signature(base_url: str, repo: str, signature: Signature) -> None:
    """Push the artifact by digest and the OCI referrers fallback tag index naming it."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await push_blob(session, base_url, repo, EMPTY_CONFIG)
        await push_blob(session, base_url, repo, signature.payload.data)
        await push_manifest(session, base_url, repo, signature.digest, signature.manifest, OCI_MANIFEST)
        index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": signature.digest, "size": len(signature.manifest),
             "artifactType": SIGNATURE_TYPE}]})
        await push_manifest(session, base_url, repo, signature.subject.replace(":", "-"), index, OCI_INDEX)


@dataclass
class UpstreamSet:
    """What ``push_mirror_set`` put upstream: ``img`` under tags, ``multi`` (amd64 + arm64) at v1."""

    images: dict[str, Image]   # tag -> image of repo bars/img
    index: ImageIndex          # bars/multi:v1
    signature: Signature       # a referrer of bars/img:v1.0.0


SEMVER_TAGS = ("v1.0.0", "v1.2.0", "v1.3.1", "v2.0.0", "latest")


async def push_mirror_set(upstream_url: str, prefix: str = "bars", sizes=(1024, 8192)) -> UpstreamSet:
    images = {}
    for tag in SEMVER_TAGS:
        image = make_image(f"{prefix}-img-{tag}", sizes)
        await push_image(upstream_url, f"{prefix}/img", image, tag=tag)
        images[tag] = image
    index = make_index(f"{prefix}-multi", sizes)
    await push_image(upstream_url, f"{prefix}/multi", index, tag="v1")
    signature = make_signature(images["v1.0.0"])
    await push_signature(upstream_url, f"{prefix}/img", signature)
    return UpstreamSet(images, index, signature)


def write_list(path: Path, images: list[dict], name: str | None = None) -> Path:
    doc: dict = {"images": images}
    if name is not None:
        doc["name"] = name
    path.write_text(yaml.safe_dump(doc))
    return path
