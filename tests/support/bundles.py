"""Helpers for bundle tests: a store holding mirrored images, bundles read back, hand-made
``docker save`` tarballs, and the ``wharf mirror`` commands run as the operator runs them.

Until ``wharf mirror sync`` exists, content gets into a store the way a sync would leave it: pushed
to the real upstream, pulled through Wharf by path prefix (so Wharf stored it), then adopted under
a holder (``MirrorRecords.adopt``), which is what a sync does last.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

from support.images import MANIFEST_ACCEPT, Image, ImageIndex, push_image
from support.servers import _die_with_parent
from support.wharf_serve import wharf_argv, wharf_env, write_config


def upstream_name(url: str) -> str:
    return url.split("://", 1)[1]


async def mirror_into(wharf, upstream_url: str, repo: str, content: Image | ImageIndex,
                      tags: list[str], holder: str = "testlist", push: bool = True):
    """Push ``content`` under ``tags`` upstream, pull it all through ``wharf``, adopt it under
    ``holder``; returns the MirroredImage."""
    from proxy.http import keys
    from proxy.mirror.records import MirroredImage

    name = f"{upstream_name(upstream_url)}/{repo}"
    for tag in tags:
        if push:
            await push_image(upstream_url, repo, content, tag)
        async with wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
    for digest in content.manifests:
        async with wharf.client.get(f"/v2/{name}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}) as resp:
            assert resp.status == 200, await resp.text()
    for digest in content.blobs:
        async with wharf.client.get(f"/v2/{name}/blobs/{digest}") as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
    records = wharf.app[keys.MIRROR_RECORDS]
    previous = records.images(holder).get(name)
    image = MirroredImage(name, upstream_name(upstream_url), repo,
                          tags={**(previous.tags if previous else {}), **{t: content.digest for t in tags}},
                          manifests={**(previous.manifests if previous else {}),
                                     **{d: mt for d, (_, mt) in content.manifests.items()}},
                          blobs={**(previous.blobs if previous else {}),
                                 **{d: len(data) for d, data in content.blobs.items()}})
    records.adopt(image, holder)
    return image


def wharf_config(root: Path, upstreams: dict[str, str], **extra) -> dict:
    """A config for a CLI process on the store at ``root`` with ``upstreams`` {name: url}."""
    return {"listen": "127.0.0.1:0", "storage": {"root": str(root)}, "default_upstream": None,
            "upstreams": [{"name": n, "url": u, "tag_ttl": 300} for n, u in upstreams.items()], **extra}


def wharf_store(wharf) -> Path:
    from proxy.http import keys
    return wharf.app[keys.CONFIG].storage.root


def config_of(wharf, workdir: Path) -> Path:
    """A config file for CLI commands on ``wharf``'s store, with its upstreams."""
    from proxy.http import keys
    config = wharf.app[keys.CONFIG]
    return write_config(workdir, wharf_config(config.storage.root, {u.name: u.url for u in config.upstreams}))


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str


def wharf_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> Result:
    done = subprocess.run(wharf_argv(*args), cwd=cwd, env=wharf_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_die_with_parent)
    return Result(done.returncode, done.stdout, done.stderr)


def one_line(result: Result, status: int, *words: str) -> str:
    """The command failed with ``status`` and one line on stderr (no traceback) holding ``words``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.status == status, f"exit {result.status}:\n{result.stdout}\n{result.stderr}"
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


# reading bundles back -----------------------------------------------------------------------------
def open_tar(path: Path) -> tarfile.TarFile:
    head = path.read_bytes()[:4]
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(
            path.read_bytes())), mode="r:")
    return tarfile.open(path, mode="r:*")


def members(path: Path) -> list[str]:
    with open_tar(path) as tar:
        return [m.name for m in tar.getmembers()]


def member_bytes(path: Path, name: str) -> bytes:
    with open_tar(path) as tar:
        return tar.extractfile(name).read()


def blob_members(path: Path) -> set[str]:
    return {"sha256:" + n.rsplit("/", 1)[1] for n in members(path) if n.startswith("blobs/sha256/")}


def rewrite_member(source: Path, dest: Path, name: str, change) -> None:
    """Copy a plain tar with ``change(bytes) -> bytes`` applied to one member (same size)."""
    with tarfile.open(source) as tar, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        for member in tar.getmembers():
            data = tar.extractfile(member).read() if member.isfile() else None
            if member.name == name:
                data = change(data)
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)


# hand-made docker save tarballs -------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(seed: str, size: int) -> bytes:
    """An uncompressed layer (a tar with one file of seeded random bytes), as docker save holds it."""
    content = random.Random(seed).randbytes(size)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/{seed}.bin")
        info.size, info.mtime, info.mode = size, 1_700_000_000, 0o644
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def image_config(layers: list[bytes], label: str) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
                       "config": {"Cmd": ["/bin/true"], "Labels": {"test": label}},
                       "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]}},
                      sort_keys=True).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


@dataclass
class SavedImage:
    repo_tags: list[str]
    config: bytes
    layers: list[bytes]


def docker_save_classic(path: Path, images: list[SavedImage]) -> None:
    """What ``docker save`` (before Docker 25) writes: ``<id>/layer.tar`` (a layer saved before is a
    symbolic link to the first copy), ``<config hex>.json``, ``manifest.json``, ``repositories``."""
    manifest, saved = [], {}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for number, image in enumerate(images):
            paths = []
            for index, layer in enumerate(image.layers):
                layer_id = hashlib.sha256(f"{number}:{index}".encode()).hexdigest()
                _add(tar, f"{layer_id}/VERSION", b"1.0")
                _add(tar, f"{layer_id}/json", json.dumps({"id": layer_id}).encode())
                if sha256(layer) in saved:
                    link = tarfile.TarInfo(f"{layer_id}/layer.tar")
                    link.type, link.linkname = tarfile.SYMTYPE, f"../{saved[sha256(layer)]}"
                    tar.addfile(link)
                else:
                    _add(tar, f"{layer_id}/layer.tar", layer)
                    saved[sha256(layer)] = f"{layer_id}/layer.tar"
                paths.append(f"{layer_id}/layer.tar")
            config_name = sha256(image.config).split(":", 1)[1] + ".json"
            _add(tar, config_name, image.config)
            manifest.append({"Config": config_name, "RepoTags": image.repo_tags, "Layers": paths})
        _add(tar, "manifest.json", json.dumps(manifest).encode())
        _add(tar, "repositories", b"{}")


def docker_save_oci(path: Path, name: str, tag: str, image: SavedImage, signature: bytes | None = None) -> bytes:
    """What Docker 25+ writes: an OCI layout (uncompressed layers) plus manifest.json; returns the
    manifest's bytes. ``signature``: a referrer manifest listed in index.json without a name."""
    oci_layer = "application/vnd.oci.image.layer.v1.tar"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha256(image.config), "size": len(image.config)},
                           "layers": [{"mediaType": oci_layer, "digest": sha256(layer), "size": len(layer)}
                                      for layer in image.layers]}).encode()
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(manifest),
                            "size": len(manifest),
                            "annotations": {"io.containerd.image.name": f"{name}:{tag}",
                                            "org.opencontainers.image.ref.name": tag}}]}
    extra = []
    if signature is not None:
        index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": sha256(signature), "size": len(signature)})
        extra = [signature, b"{}"]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for data in [image.config, *image.layers, manifest, *extra]:
            _add(tar, "blobs/sha256/" + sha256(data).split(":", 1)[1], data)
        _add(tar, "index.json", json.dumps(index).encode())
        _add(tar, "manifest.json", json.dumps([{"Config": "blobs/sha256/" + sha256(image.config)[7:],
                                                "RepoTags": image.repo_tags,
                                                "Layers": ["blobs/sha256/" + sha256(l)[7:] for l in image.layers]}]).encode())
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    return manifest
