"""Synthetic images, written straight into a docker-registry (distribution 2.8) filesystem store.

Layers are uncompressed tars holding one file of seeded PCG64 output (incompressible), every
timestamp is fixed, JSON is serialised with sorted keys: the same profile always gives the same
digests. Writing the store's files directly (blob data plus the repository link files) instead of
pushing over HTTP makes a 4 GiB blob cost one pass of generation and hashing.

The result is described in ``images.json`` next to the store; generation is skipped when that
file already describes the same spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .profile import Profile

SPEC_VERSION = 2
CHUNK = 8 * 2**20

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
CREATED = "2024-01-01T00:00:00Z"


@dataclass
class Blob:
    digest: str
    size: int
    media_type: str


@dataclass
class Image:
    repo: str
    tag: str
    digest: str                 # of the manifest (or index) the tag points to
    media_type: str
    manifest_size: int
    layers: list[Blob] = field(default_factory=list)    # of the image itself, or of the first platform
    config: Blob | None = None
    pull_bytes: int = 0         # what one platform's pull transfers: manifest(s) + config + layers

    @property
    def largest_layer(self) -> Blob:
        return max(self.layers, key=lambda b: b.size)


class Store:
    """The distribution filesystem layout under ``root`` (its ``rootdirectory``)."""

    def __init__(self, root: Path):
        self.root = root
        self.v2 = root / "docker" / "registry" / "v2"

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.v2 / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def _link(self, path: Path, digest: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "link").write_text(digest)

    def put_stream(self, chunks: Iterator[bytes]) -> tuple[str, int]:
        tmp = self.v2 / "tmp-upload"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        h, size = hashlib.sha256(), 0
        with open(tmp, "wb") as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
                size += len(chunk)
        digest = "sha256:" + h.hexdigest()
        dest = self.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        return digest, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put_stream(iter([data]))

    def link_layer(self, repo: str, digest: str) -> None:
        self._link(self._repo(repo) / "_layers" / "sha256" / digest.split(":")[1], digest)

    def link_manifest(self, repo: str, digest: str) -> None:
        self._link(self._repo(repo) / "_manifests" / "revisions" / "sha256" / digest.split(":")[1], digest)

    def tag(self, repo: str, tag: str, digest: str) -> None:
        base = self._repo(repo) / "_manifests" / "tags" / tag
        self._link(base / "current", digest)
        self._link(base / "index" / "sha256" / digest.split(":")[1], digest)

    def _repo(self, repo: str) -> Path:
        return self.v2 / "repositories" / repo


def random_stream(seed: int, size: int) -> Iterator[bytes]:
    gen = np.random.PCG64(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        words = gen.random_raw((n + 7) // 8)
        yield words.astype("<u8").tobytes()[:n]
        left -= n


def layer_tar(seed: int, total: int) -> Iterator[bytes]:
    """A tar of exactly ``total`` bytes (a multiple of 512): one file of random bytes, mtime 0."""
    assert total % 512 == 0 and total >= 2048
    payload = total - 512 - 1024
    info = tarfile.TarInfo(f"bench/blob-{seed}.bin")
    info.size, info.mtime, info.mode, info.uid, info.gid = payload, 0, 0o644, 0, 0
    info.uname = info.gname = "root"
    yield info.tobuf(format=tarfile.GNU_FORMAT)
    yield from random_stream(seed, payload)
    yield b"\0" * 1024


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _desc(media_type: str, digest: str, size: int, **extra) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def _image(store: Store, repo: str, tag: str | None, layer_sizes: list[int], seed: int, docker: bool,
           arch: str = "amd64") -> Image:
    layer_type = DOCKER_LAYER if docker else OCI_LAYER
    layers = []
    for i, size in enumerate(layer_sizes):
        digest, n = store.put_stream(layer_tar(seed * 1000 + i, size))
        store.link_layer(repo, digest)
        layers.append(Blob(digest, n, layer_type))
    config = {
        "architecture": arch, "os": "linux", "created": CREATED,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]},
        "history": [{"created": CREATED, "created_by": f"wharf bench layer {i}"} for i in range(len(layers))],
    }
    config_type = DOCKER_CONFIG if docker else OCI_CONFIG
    cdigest, csize = store.put_bytes(canonical(config))
    store.link_layer(repo, cdigest)
    mtype = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2, "mediaType": mtype,
        "config": _desc(config_type, cdigest, csize),
        "layers": [_desc(b.media_type, b.digest, b.size) for b in layers],
    }
    body = canonical(manifest)
    mdigest, msize = store.put_bytes(body)
    store.link_manifest(repo, mdigest)
    if tag:
        store.tag(repo, tag, mdigest)
    return Image(repo, tag or "", mdigest, mtype, msize, layers, Blob(cdigest, csize, config_type),
                 pull_bytes=msize + csize + sum(b.size for b in layers))


def _index(store: Store, repo: str, tag: str, layer_size: int, seed: int) -> Image:
    children = [_image(store, repo, None, [layer_size], seed + i, docker=False, arch=arch)
                for i, arch in enumerate(["amd64", "arm64"])]
    index = {
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [_desc(OCI_MANIFEST, c.digest, c.manifest_size,
                            platform={"architecture": arch, "os": "linux"})
                      for c, arch in zip(children, ["amd64", "arm64"])],
    }
    digest, size = store.put_bytes(canonical(index))
    store.link_manifest(repo, digest)
    store.tag(repo, tag, digest)
    first = children[0]
    return Image(repo, tag, digest, OCI_INDEX, size, first.layers, first.config,
                 pull_bytes=size + first.pull_bytes)


def _round512(n: int) -> int:
    return max(2048, n // 512 * 512)


def spec_of(profile: Profile) -> dict:
    return {"version": SPEC_VERSION, "big": profile.big_bytes, "layer_count": profile.layer_count,
            "layer_bytes": profile.layer_bytes, "multi": profile.multi_layer_bytes,
            "mem_small": profile.mem_small, "mem_large": profile.mem_large}


def generate(profile: Profile, root: Path, log=print) -> dict[str, Image]:
    """Fill the store at ``root`` (once per spec) and return the images by short name."""
    meta = root / "images.json"
    spec = spec_of(profile)
    if meta.exists():
        saved = json.loads(meta.read_text())
        if saved.get("spec") == spec:
            return {k: _load_image(v) for k, v in saved["images"].items()}
    if root.exists():
        import shutil
        shutil.rmtree(root)
    store = Store(root / "store")
    log(f"generating images into {root} ...")
    images = {
        "big": _image(store, "bench/big", "latest", [_round512(profile.big_bytes)], seed=1, docker=False),
        "layers": _image(store, "bench/layers", "latest", [_round512(profile.layer_bytes)] * profile.layer_count,
                         seed=2, docker=True),
        "multi": _index(store, "bench/multi", "latest", _round512(profile.multi_layer_bytes), seed=3),
        "mem_small": _image(store, "bench/mem-small", "latest", [_round512(profile.mem_small)], seed=5, docker=False),
        "mem_large": _image(store, "bench/mem-large", "latest", [_round512(profile.mem_large)], seed=6, docker=False),
    }
    meta.write_text(json.dumps({"spec": spec, "images": {k: asdict(v) for k, v in images.items()}}, indent=1))
    return images


def _load_image(d: dict) -> Image:
    d = dict(d)
    d["layers"] = [Blob(**b) for b in d["layers"]]
    d["config"] = Blob(**d["config"]) if d.get("config") else None
    return Image(**d)
