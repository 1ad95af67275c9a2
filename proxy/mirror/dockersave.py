"""Reading ``docker save`` tarballs, in the classic format and in the newer one (an OCI layout).

- Classic: ``manifest.json`` is ``[{"Config": "<hex>.json", "RepoTags": ["alpine:3"], "Layers":
  ["<id>/layer.tar", …]}]``. Each image becomes a Docker schema 2 manifest built here: config
  ``application/vnd.docker.container.image.v1+json``, layers
  ``application/vnd.docker.image.rootfs.diff.tar`` (uncompressed: a layer's digest is the sha256
  of its layer.tar, which must be the config's ``rootfs.diff_ids`` entry; each is checked, and the
  config's digest must be its file name). The manifest is stored byte-exact as built, so the same
  save always gives the same digest.
- Newer (Docker 25+): the tarball is an OCI image layout (``index.json``, ``blobs/``) beside
  ``manifest.json``; it is read as a layout, named by the ``io.containerd.image.name`` annotation,
  a full ``org.opencontainers.image.ref.name``, or else the ``RepoTags`` of the entry with the
  same config.
- Names are Docker's: ``alpine:3`` is ``docker.io/library/alpine:3``; a first component with a
  dot or a colon, or ``localhost``, is a registry host.
Pure: callers store the blobs and say where each tar path landed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from proxy.mirror.bundle import BundleError, blob_digest, loads

MANIFEST_FILE = "manifest.json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"


def split_reference(text: str) -> tuple[str, str | None]:
    """``name[:tag][@digest]`` -> (name, tag or None)."""
    name = text.split("@", 1)[0]
    head, sep, tail = name.rpartition(":")
    if sep and "/" not in tail:
        return head, tail
    return name, None


def docker_name(name: str) -> str:
    """The full name Docker means: ``alpine`` -> ``docker.io/library/alpine``."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if sep else f"docker.io/library/{name}"


def full_reference(text: str) -> tuple[str, str | None] | None:
    """A full name with its tag from an annotation or a RepoTag; None for a bare tag (``3``)."""
    if "/" not in text and ":" not in text:
        return None
    name, tag = split_reference(text)
    return docker_name(name), tag


@dataclass(frozen=True)
class ClassicImage:
    """One entry of a classic save, as a Docker schema 2 manifest."""

    references: tuple[tuple[str, str], ...]   # (full name, tag)
    manifest: bytes
    config: tuple[str, int]                    # (digest, size)
    layers: tuple[tuple[str, int], ...]


def _entries(manifest_json: bytes, source: str) -> list[dict]:
    try:
        entries = loads(manifest_json)
    except ValueError:
        entries = None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BundleError(f"{source}: {MANIFEST_FILE} is not a docker save manifest (a list of images)")
    return entries


def classic_images(manifest_json: bytes, file_of: Callable[[str], tuple[str, int] | None],
                   read: Callable[[str], bytes | None], source: str) -> list[ClassicImage]:
    """The images of a classic save; ``file_of(path)`` -> (digest, size) where that tar path was stored."""
    images = []
    for number, entry in enumerate(_entries(manifest_json, source), 1):
        what = f"{source}: image {number} of {MANIFEST_FILE}"
        tags = entry.get("RepoTags") if isinstance(entry.get("RepoTags"), list) else []
        references = [ref for ref in (full_reference(t) for t in tags if isinstance(t, str)) if ref and ref[1]]
        if not references:
            raise BundleError(f"{what} has no name (RepoTags is empty): save it by name, e.g. docker save alpine:3")
        config_path, layer_paths = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_path, str) or not isinstance(layer_paths, list):
            raise BundleError(f"{what} names no Config or no Layers")
        config = file_of(config_path)
        if config is None:
            raise BundleError(f"{what}: its config {config_path} is not in the tarball")
        named = config_path.rsplit("/", 1)[-1].removesuffix(".json")
        if named != config[0].split(":", 1)[1]:
            raise BundleError(f"{what}: config {config_path} does not match its name (the tarball is damaged)")
        layers = []
        for path in layer_paths:
            found = file_of(path) if isinstance(path, str) else None
            if found is None:
                raise BundleError(f"{what}: layer {path} is not in the tarball")
            layers.append(found)
        _check_diff_ids(what, read(config[0]), layers, layer_paths)
        manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": {"mediaType": DOCKER_CONFIG, "size": config[1], "digest": config[0]},
                    "layers": [{"mediaType": DOCKER_LAYER_TAR, "size": size, "digest": digest}
                               for digest, size in layers]}
        images.append(ClassicImage(tuple(references), json.dumps(manifest, indent=3).encode(), config, tuple(layers)))
    return images


def _check_diff_ids(what: str, config_bytes: bytes | None, layers: list[tuple[str, int]], paths: list) -> None:
    """Each layer.tar's sha256 is the config's diff_id of that layer: a changed layer is refused."""
    try:
        diff_ids = loads(config_bytes or b"")["rootfs"]["diff_ids"]
        if not isinstance(diff_ids, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{what}: its config is not an image config (no rootfs.diff_ids)") from None
    if len(diff_ids) != len(layers):
        raise BundleError(f"{what}: {len(layers)} layer(s) but its config lists {len(diff_ids)}")
    for (digest, _), diff_id, path in zip(layers, diff_ids, paths):
        if digest != diff_id:
            raise BundleError(f"{what}: layer {path} is {digest}, its config says {diff_id} (the tarball is damaged)")


def repo_tags_by_config(manifest_json: bytes | None, source: str) -> dict[str, list[tuple[str, str]]]:
    """In a newer save: config digest -> the (full name, tag) pairs of its RepoTags."""
    if manifest_json is None:
        return {}
    found: dict[str, list[tuple[str, str]]] = {}
    for entry in _entries(manifest_json, source):
        config = blob_digest(str(entry.get("Config", "")))
        if config is None:
            continue
        for tag in entry.get("RepoTags") if isinstance(entry.get("RepoTags"), list) else []:
            ref = full_reference(tag) if isinstance(tag, str) else None
            if ref and ref[1]:
                found.setdefault(config, []).append((ref[0], ref[1]))
    return found
